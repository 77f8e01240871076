//! The console's HTTP handlers: authentication (header or `?access_token=`), ownership checks,
//! and the event-stream responses. They take the console and the records store from the router
//! state (`Console: FromRef<S>`, `Arc<Store>: FromRef<S>`), so the console does not depend on
//! the server's `AppState`, which holds it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRef, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use sse_core::encoder::{RESPONSE_HEADERS, event_stream_body};
use sse_core::multiplex::open_body;
use uuid::Uuid;

use super::config::MAX_MULTIPLEXED_STREAMS;
use super::{Console, ConsoleStream};
use crate::group_mode::RelayProbe;
use crate::http::limits::{LimitPermit, Limits};
use crate::http::{ApiError, IdPath, bearer_token, user_from_header_or_param};
use crate::store::{Store, User};

/// Query parameters every console route understands; others are ignored (cache busters).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamQuery {
    access_token: Option<String>,
    last_event_id: Option<String>,
    dongles: Option<String>,
    groups: Option<String>,
}

fn query(uri: &Uri) -> Result<StreamQuery, ApiError> {
    Query::<StreamQuery>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", err.body_text()))
}

/// The user of a stream request (`Authorization: Bearer` when present, else `access_token`)
/// and the stream's place under the per-token cap of concurrent streams, if there is one.
async fn authenticate(
    store: &Arc<Store>,
    limits: Option<&Limits>,
    headers: &HeaderMap,
    query: &StreamQuery,
) -> Result<(User, Option<LimitPermit>), ApiError> {
    let user = user_from_header_or_param(store, headers, query.access_token.as_deref()).await?;
    let token = match bearer_token(headers)? {
        Some(token) => token,
        None => query.access_token.as_deref().unwrap_or_default().trim(),
    };
    let permit = limits.map(|l| l.console_stream(token)).transpose()?;
    Ok((user, permit))
}

/// What every console route starts from: the router state it needs, and the caller,
/// authenticated (see [`authenticate`]) with its place under the stream cap.
pub(crate) struct StreamRequest {
    console: Console,
    store: Arc<Store>,
    relay: Arc<dyn RelayProbe>,
    headers: HeaderMap,
    query: StreamQuery,
    user: User,
    permit: Option<LimitPermit>,
}

impl<S> FromRequestParts<S> for StreamRequest
where
    Console: FromRef<S>,
    Arc<Store>: FromRef<S>,
    Arc<dyn RelayProbe>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let store = Arc::<Store>::from_ref(state);
        let limits = parts.extensions.get::<Limits>().cloned();
        let query = query(&parts.uri)?;
        let (user, permit) = authenticate(&store, limits.as_ref(), &parts.headers, &query).await?;
        Ok(StreamRequest {
            console: Console::from_ref(state),
            store,
            relay: Arc::<dyn RelayProbe>::from_ref(state),
            headers: parts.headers.clone(),
            query,
            user,
            permit,
        })
    }
}

/// `Last-Event-ID` (header) wins over `last_event_id` (query). A header that is not valid text
/// is passed on as lossy text: the hub answers it with a `malformed` reset.
fn last_event_id(headers: &HeaderMap, query: &StreamQuery) -> Option<String> {
    headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .or_else(|| query.last_event_id.clone())
}

/// Counts an open response in the subscribers gauge for as long as it lives.
struct SubscriberGuard(prometheus_client::metrics::gauge::Gauge);

impl SubscriberGuard {
    fn new(console: &Console) -> SubscriberGuard {
        let gauge = console.metrics().subscribers.clone();
        gauge.inc();
        SubscriberGuard(gauge)
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A 200 event-stream response around `body`, which ends when the console closes. Dropping it
/// (client gone) frees the subscription and the gauge.
fn stream_response(
    console: &Console,
    permit: Option<LimitPermit>,
    first: Option<Bytes>,
    body: impl Stream<Item = Bytes> + Send + 'static,
) -> Response {
    // `first` goes right after the opening chunk (`retry:` and `: stream open`).
    let mut first = first;
    let body = body
        .flat_map(move |chunk| futures::stream::iter(std::iter::once(chunk).chain(first.take())));
    let guard = (SubscriberGuard::new(console), permit);
    let mut closed = console.closed();
    let closing = async move {
        // Ends on close, or when the console itself is gone.
        let _ = closed.wait_for(|c| *c).await;
    };
    let body = body.take_until(closing).map(move |chunk| {
        let _ = &guard;
        Ok::<_, Infallible>(chunk)
    });
    let mut response = Response::new(Body::from_stream(body));
    for (name, value) in RESPONSE_HEADERS {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

async fn single(
    console: &Console,
    permit: Option<LimitPermit>,
    first: Option<Bytes>,
    scope: ConsoleStream,
    last_event_id: Option<String>,
) -> Response {
    if let ConsoleStream::Group(id) = scope {
        console.note_group(id);
    }
    let key = scope.key();
    let items = match console
        .hub()
        .subscribe(&key, last_event_id.as_deref())
        .await
    {
        Ok(sub) => sub.boxed(),
        Err(err) => {
            // A hub outage is resumable: the client reconnects with its last ID.
            tracing::warn!(stream = %key, error = %err, "console subscription failed");
            futures::stream::once(futures::future::ready(Err(err))).boxed()
        }
    };
    stream_response(
        console,
        permit,
        first,
        event_stream_body(items, console.body_options()),
    )
}

/// The first of `scopes` that `user` does not own, as the `not_found` subject (`"dongle"` /
/// `"group"`), checked in one store call. Someone else's stream answers exactly like a missing one.
async fn first_not_owned(
    store: &Arc<Store>,
    user: Uuid,
    scopes: Vec<ConsoleStream>,
) -> Result<Option<&'static str>, ApiError> {
    let missing = store
        .call(move |store| {
            for scope in scopes {
                let (owned, what) = match scope {
                    ConsoleStream::Dongle(id) => (store.get_dongle(user, id)?.is_some(), "dongle"),
                    ConsoleStream::Group(id) => (store.get_group(user, id)?.is_some(), "group"),
                };
                if !owned {
                    return Ok(Some(what));
                }
            }
            Ok(None)
        })
        .await?;
    Ok(missing)
}

/// One console stream of something the caller owns.
/// The current `group_state` of each of `groups` (owned by `user`), encoded without an `id:`
/// so that a client's resume position is unaffected: what a subscriber starting without a
/// last-seen ID gets first, so it knows the mode before the next change. `None` when nothing
/// is to be sent.
async fn current_group_states(
    store: &Arc<Store>,
    relay: &Arc<dyn RelayProbe>,
    user: Uuid,
    groups: Vec<Uuid>,
) -> Result<Option<Bytes>, ApiError> {
    if groups.is_empty() {
        return Ok(None);
    }
    let records = store
        .call(move |store| {
            let mut found = Vec::new();
            for id in groups {
                found.extend(store.get_group(user, id)?);
            }
            Ok(found)
        })
        .await?;
    let mut out = BytesMut::new();
    for group in records {
        let event = super::ConsoleEvent::from(super::GroupState {
            ts: sse_core::events::timestamp(chrono::Utc::now()),
            group: group.state(relay.status(group.id).as_ref()),
        });
        if let Err(err) = sse_core::encoder::encode_event(
            &mut out,
            Some(event.event_type()),
            None,
            &event.to_data(),
        ) {
            tracing::warn!(error = %err, "cannot encode a group_state");
        }
    }
    Ok((!out.is_empty()).then(|| out.freeze()))
}

impl StreamRequest {
    /// The stream of one dongle or group the caller owns.
    async fn owned_single(self, scope: ConsoleStream) -> Result<Response, ApiError> {
        let user = self.user.id;
        if let Some(what) = first_not_owned(&self.store, user, vec![scope]).await? {
            return Err(ApiError::not_found(what));
        }
        let last_event_id = last_event_id(&self.headers, &self.query);
        let first = match scope {
            ConsoleStream::Group(id) if last_event_id.is_none() => {
                current_group_states(&self.store, &self.relay, user, vec![id]).await?
            }
            _ => None,
        };
        Ok(single(&self.console, self.permit, first, scope, last_event_id).await)
    }
}

/// `GET /api/v1/streams/dongles/{id}/console`.
pub(crate) async fn dongle(
    IdPath(id): IdPath,
    request: StreamRequest,
) -> Result<Response, ApiError> {
    request.owned_single(ConsoleStream::Dongle(id)).await
}

/// `GET /api/v1/streams/groups/{id}/console`.
pub(crate) async fn group(
    IdPath(id): IdPath,
    request: StreamRequest,
) -> Result<Response, ApiError> {
    request.owned_single(ConsoleStream::Group(id)).await
}

fn id_list(field: &str, raw: Option<&str>) -> Result<Vec<Uuid>, ApiError> {
    raw.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Uuid::parse_str(s).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("{field} must be a comma-separated list of ids; {s:?} is not an id"),
                )
            })
        })
        .collect()
}

/// `GET /api/v1/streams/console?dongles=<id,…>&groups=<id,…>`.
pub(crate) async fn multiplexed(request: StreamRequest) -> Result<Response, ApiError> {
    let StreamRequest {
        console,
        store,
        relay,
        headers,
        query,
        user,
        permit,
    } = request;
    let dongles = id_list("dongles", query.dongles.as_deref())?;
    let groups = id_list("groups", query.groups.as_deref())?;
    let scopes: Vec<ConsoleStream> = dongles
        .iter()
        .map(|id| ConsoleStream::Dongle(*id))
        .chain(groups.iter().map(|id| ConsoleStream::Group(*id)))
        .collect();
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    if scopes.is_empty() {
        return Err(bad(
            "name at least one stream with dongles=<id,…> or groups=<id,…>".to_owned(),
        ));
    }
    if scopes.len() > MAX_MULTIPLEXED_STREAMS {
        return Err(bad(format!(
            "at most {MAX_MULTIPLEXED_STREAMS} streams per connection, {} named",
            scopes.len()
        )));
    }
    if scopes.iter().collect::<HashSet<_>>().len() != scopes.len() {
        return Err(bad("a stream is named twice".to_owned()));
    }
    let missing = first_not_owned(&store, user.id, scopes.clone()).await?;
    if let Some(what) = missing {
        return Err(ApiError::not_found(what));
    }
    for scope in &scopes {
        if let ConsoleStream::Group(id) = scope {
            console.note_group(*id);
        }
    }
    let keys: Vec<String> = scopes.iter().map(ConsoleStream::key).collect();
    let last_event_id = last_event_id(&headers, &query);
    let first = if last_event_id.is_none() {
        current_group_states(&store, &relay, user.id, groups).await?
    } else {
        None
    };
    let body = open_body(
        console.hub(),
        keys,
        last_event_id.as_deref(),
        console.body_options(),
    )
    .await;
    Ok(stream_response(&console, permit, first, body))
}
