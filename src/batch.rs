//! Coalescing concurrent calls into batches (group commit). Callers send one item each and wait
//! for their own answer; a single writer takes whatever has queued up (at most `max`) and hands
//! it to the batch function in one go. While a batch is being written, the next one fills, so
//! batching adds no waiting under low load and saves round trips under high load.

use std::{future::Future, sync::Arc};

use tokio::sync::{mpsc, oneshot};

type Job<I, O> = (I, oneshot::Sender<O>);

/// Handle to a batch writer; cheap to clone. The writer stops when every handle is dropped.
pub struct Coalescer<I, O> {
    tx: mpsc::Sender<Job<I, O>>,
}

impl<I, O> Clone for Coalescer<I, O> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone() }
    }
}

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// Starts the writer. `run` gets a batch and must return one output per input, in order.
    pub fn start<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let max = max.max(1);
        // Room for a few batches; beyond that callers wait (backpressure), they are not refused.
        let (tx, mut rx) = mpsc::channel::<Job<I, O>>(max * 4);
        let run = Arc::new(run);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let (inputs, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
                let outputs = run(inputs).await;
                for (output, reply) in outputs.into_iter().zip(replies) {
                    // A caller that went away does not stop the others.
                    let _ = reply.send(output);
                }
            }
        });
        Self { tx }
    }

    /// Queues `input` and waits for its output; `None` if the writer has stopped.
    pub async fn call(&self, input: I) -> Option<O> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((input, reply)).await.ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let doubler = Coalescer::start(8, move |xs: Vec<u32>| {
            seen.lock().map(|mut s| s.push(xs.len())).ok();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                xs.into_iter().map(|x| x * 2).collect()
            }
        });
        let answers = futures::future::join_all((0..40).map(|i| doubler.call(i))).await;
        assert_eq!(answers, (0..40).map(|i| Some(i * 2)).collect::<Vec<_>>());
        let sizes = sizes.lock().map(|s| s.clone()).unwrap_or_default();
        assert!(sizes.iter().all(|n| *n <= 8), "{sizes:?}");
        assert!(sizes.len() < 40, "calls were batched: {sizes:?}");
    }
}
