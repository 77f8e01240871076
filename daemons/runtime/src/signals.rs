//! Stopping on SIGTERM / Ctrl-C, shared by every long-running subcommand.
//!
//! The daemons' libraries never install signal handlers themselves: they take a stop future.
//! The `tether` binary registers [`StopSignals`] first thing and hands them `wait()`.

/// Resolves on Ctrl-C or SIGTERM (handlers installed on the first poll; where a signal during
/// start-up must not be lost, register [`StopSignals`] first).
pub async fn shutdown_signal() {
    StopSignals::register().wait().await;
}

/// SIGTERM and SIGINT handlers, installed when registered; a signal that arrives before
/// [`StopSignals::wait`] is kept for it.
#[derive(Debug)]
pub struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers; call it first thing, before any slow start-up work.
    pub fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            StopSignals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            StopSignals {}
        }
    }

    /// Resolves on the first SIGTERM or SIGINT (Ctrl-C), also one received since `register`.
    pub async fn wait(self) {
        #[cfg(unix)]
        {
            let (mut term, mut int) = (self.term, self.int);
            let term = async {
                match &mut term {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match &mut int {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            };
            tokio::select! {
                _ = term => {}
                _ = int => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
