//! What subscriptions wait on: the engine thread publishes its store's head position after
//! each batch of inputs, and a subscription that has caught up sleeps until the head moves
//! (pushed, not polled: an idle node wakes no subscriber). At most `SUBSCRIPTIONS_MAX`
//! subscriptions are served at once.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Subscriptions one node serves at once; one more is answered 503.
pub const SUBSCRIPTIONS_MAX: usize = 1_024;

/// The engine thread's side: publishes the head.
#[derive(Debug)]
pub struct HeadSender(watch::Sender<u64>);

/// The subscriptions' side: the head, and the slots.
#[derive(Clone, Debug)]
pub struct Feed {
    head: watch::Receiver<u64>,
    slots: Arc<Semaphore>,
}

/// A subscription's view of the head: it marks what it has seen, and waits for more.
#[derive(Debug)]
pub struct HeadWatch(watch::Receiver<u64>);

impl Feed {
    /// A feed whose head starts at `head`, with its sending side.
    pub fn new(head: u64) -> (HeadSender, Self) {
        let (sender, receiver) = watch::channel(head);
        (
            HeadSender(sender),
            Self {
                head: receiver,
                slots: Arc::new(Semaphore::new(SUBSCRIPTIONS_MAX)),
            },
        )
    }

    /// A slot for one more subscription (held as long as it runs), or `None` when
    /// `SUBSCRIPTIONS_MAX` run already.
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// A new watch of the head.
    pub fn watch(&self) -> HeadWatch {
        HeadWatch(self.head.clone())
    }
}

impl HeadSender {
    /// The store's head is now `head`: subscribers wake if it moved.
    pub fn publish(&self, head: u64) {
        self.0.send_if_modified(|current| {
            let moved = *current != head;
            *current = head;
            moved
        });
    }
}

impl HeadWatch {
    /// Marks the head as seen: call before reading, so that `changed` wakes for anything
    /// appended after that read began.
    pub fn mark_seen(&mut self) {
        self.0.borrow_and_update();
    }

    /// Waits until the head moves past what was marked; `false` once the engine stopped.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_wakes_for_a_move_after_its_mark_and_not_for_the_same_head() {
        let (sender, feed) = Feed::new(5);
        let mut watch = feed.watch();
        watch.mark_seen();
        sender.publish(5);
        let idle = tokio::time::timeout(std::time::Duration::from_millis(20), watch.changed());
        assert!(idle.await.is_err(), "woke without a move");
        sender.publish(6);
        assert!(watch.changed().await);
        drop(sender);
        assert!(!watch.changed().await, "a stopped engine ends the wait");
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let (_sender, feed) = Feed::new(0);
        let held: Vec<_> = (0..SUBSCRIPTIONS_MAX).map(|_| feed.slot()).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(feed.slot().is_none());
        drop(held);
        assert!(feed.slot().is_some());
    }
}
