//! [`OutboxStoreHandle`]: an [`OutboxStore`] on a thread of its own, reached from async code.
//!
//! SQLite blocks, so no store call runs on an async runtime's worker threads. The store lives
//! on one dedicated thread; callers send it jobs over a channel and await the answer. The thread
//! takes every job queued when it wakes up and commits the consecutive commits among them in
//! **one transaction** (group commit): under load the transactions grow instead of the queue,
//! and one fsync covers many streams' appends and acks. If the combined transaction fails, each
//! commit is retried alone, so one bad commit fails only its own caller. Jobs are answered in
//! the order they were sent; a read sees every commit sent before it.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::store::{OutboxStore, StoredRecord, StoredStream, StreamId, StreamWrite};
use crate::error::{Error, Result};

/// Most jobs the thread takes in one wake-up (bounds a group commit's size).
const MAX_JOBS_PER_WAKE: usize = 1024;

/// A cloneable handle to an [`OutboxStore`] running on its own thread. The thread ends when the
/// last handle and the last [`super::StreamOutbox`] opened through it are dropped, or at
/// [`close`](Self::close).
#[derive(Debug, Clone)]
pub struct OutboxStoreHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    jobs: mpsc::Sender<Job>,
    /// Keys of the streams open through this handle: one writer per stream.
    open: Mutex<HashSet<String>>,
}

/// A read or `open_stream` on the store, run after the commits queued before it. Writes go
/// through [`Job::Commit`] (the group commit), never through a call.
type StoreCall = Box<dyn FnOnce(&mut dyn OutboxStore) + Send>;

enum Job {
    Call(StoreCall),
    Commit {
        writes: Vec<StreamWrite>,
        done: oneshot::Sender<Result<()>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// Marks a stream key open while a [`super::StreamOutbox`] holds it.
#[derive(Debug)]
pub(crate) struct StreamLease {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl OutboxStoreHandle {
    /// Starts the store's thread.
    pub fn spawn(store: impl OutboxStore + 'static) -> Result<Self> {
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("tether-outbox-store".to_owned())
            .spawn(move || run(Box::new(store), &rx))
            .map_err(|_| Error::WorkerGone {
                action: "starting the outbox store thread",
            })?;
        Ok(OutboxStoreHandle {
            inner: Arc::new(Inner {
                jobs,
                open: Mutex::default(),
            }),
        })
    }

    /// Stops the thread once the jobs sent before are done, and drops the store (closing its
    /// file). Calls through any clone fail with [`Error::WorkerGone`] afterwards.
    pub async fn close(self) -> Result<()> {
        self.ask("close", |done| Job::Close { done }).await
    }

    async fn ask<T>(
        &self,
        action: &'static str,
        job: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> Result<T> {
        let (done, answer) = oneshot::channel();
        self.inner
            .jobs
            .send(job(done))
            .map_err(|_| Error::WorkerGone { action })?;
        answer.await.map_err(|_| Error::WorkerGone { action })
    }

    /// Runs `call` on the store's thread, after the commits sent before it.
    async fn call<T: Send + 'static>(
        &self,
        action: &'static str,
        call: impl FnOnce(&mut dyn OutboxStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.ask(action, |done| {
            Job::Call(Box::new(move |store| {
                let _ = done.send(call(store));
            }))
        })
        .await?
    }

    /// Opens `key` for one writer: refused with [`Error::OutboxStreamBusy`] while another
    /// holds it.
    pub(crate) async fn open_stream(&self, key: &str) -> Result<(StoredStream, StreamLease)> {
        {
            let mut open = self
                .inner
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !open.insert(key.to_owned()) {
                return Err(Error::OutboxStreamBusy {
                    stream: key.to_owned(),
                });
            }
        }
        let lease = StreamLease {
            inner: Arc::clone(&self.inner),
            key: key.to_owned(),
        };
        let key = key.to_owned();
        let stored = self
            .call("open stream", move |store| store.open_stream(&key))
            .await?;
        Ok((stored, lease))
    }

    pub(crate) async fn commit(&self, writes: Vec<StreamWrite>) -> Result<()> {
        self.ask("commit", |done| Job::Commit { writes, done })
            .await?
    }

    pub(crate) async fn read(
        &self,
        stream: StreamId,
        after_slot: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>> {
        self.call("read", move |store| store.read(stream, after_slot, max))
            .await
    }

    pub(crate) async fn read_newest(
        &self,
        stream: StreamId,
        since_ts_ms: u64,
        before_slot: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>> {
        self.call("read", move |store| {
            store.read_newest(stream, since_ts_ms, before_slot, max)
        })
        .await
    }
}

type PendingCommit = (Vec<StreamWrite>, oneshot::Sender<Result<()>>);

fn run(mut store: Box<dyn OutboxStore>, jobs: &mpsc::Receiver<Job>) {
    let mut commits: Vec<PendingCommit> = Vec::new();
    while let Ok(first) = jobs.recv() {
        let woke = std::iter::once(first).chain(jobs.try_iter().take(MAX_JOBS_PER_WAKE - 1));
        for job in woke {
            match job {
                Job::Commit { writes, done } => commits.push((writes, done)),
                Job::Call(call) => {
                    commit_all(store.as_mut(), &mut commits);
                    call(store.as_mut());
                }
                Job::Close { done } => {
                    commit_all(store.as_mut(), &mut commits);
                    drop(store);
                    let _ = done.send(());
                    return;
                }
            }
        }
        commit_all(store.as_mut(), &mut commits);
    }
}

/// Commits the queued commits in one transaction; if that fails, each alone.
fn commit_all(store: &mut dyn OutboxStore, commits: &mut Vec<PendingCommit>) {
    match commits.len() {
        0 => return,
        1 => {
            if let Some((writes, done)) = commits.pop() {
                let _ = done.send(store.commit(&writes));
            }
            return;
        }
        _ => {}
    }
    let mut all = Vec::with_capacity(commits.iter().map(|(w, _)| w.len()).sum());
    let mut ranges = Vec::with_capacity(commits.len());
    for (writes, _) in commits.iter_mut() {
        let start = all.len();
        all.append(writes);
        ranges.push(start..all.len());
    }
    let together = store.commit(&all);
    for ((_, done), range) in commits.drain(..).zip(ranges) {
        let result = match &together {
            Ok(()) => Ok(()),
            Err(_) => store.commit(&all[range]),
        };
        let _ = done.send(result);
    }
}
