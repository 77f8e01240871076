//! Both agents reach the server through a link with 200 ms of delay and 10 % loss (a
//! userspace proxy: see [`crate::fault_support::LossyProxy`]): the relay slows down but
//! delivers everything acknowledged, once and in order.

use crate::fault_support::{LossyProxy, TwoWay};
use crate::support::{Pair, ServerOptions, ServerProc, TestResult, Workspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lossy_agent_link_loses_and_duplicates_nothing() -> TestResult {
    let ws = Workspace::new()?;
    let server = ServerProc::start(&ws, ServerOptions::default()).await?;
    let link_a = LossyProxy::start(server.addr).await?;
    let link_b = LossyProxy::start(server.addr).await?;
    let token = server.user_token("lola")?;
    let pair = Pair::start_with(
        &ws,
        &server,
        "lola",
        token,
        [&link_a.base(), &link_b.base()],
    )
    .await?;
    let outcome = async {
        let stream = TwoWay::start(&ws, &server, &pair).await?;
        stream.check("over a lossy link", &server, &pair).await?;
        stream.stop().await
    }
    .await;
    pair.explain(&ws, outcome).await
}
