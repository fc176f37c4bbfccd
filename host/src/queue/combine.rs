//! Combining a key's queued updates: the destination says whether two
//! updates make one, and the queue asks it for many keys at once, before it
//! writes — never while a transaction waits on the answer.

use std::sync::Arc;

use destination_types::Request;
use futures::future::BoxFuture;

/// One update kept after combining: `inputs` consecutive updates of a
/// chain made it (1: it stands alone).
#[derive(Clone, Debug, PartialEq)]
pub struct Combined {
    pub request: Request,
    pub inputs: usize,
}

/// Combines chains of updates (each one key's, oldest first) the way the
/// destination does: each chain becomes the updates to send, in order.
pub type Combiner =
    Arc<dyn Fn(Vec<Vec<Request>>) -> BoxFuture<'static, Vec<Vec<Combined>>> + Send + Sync>;

/// Folds `chain` from the oldest: each update merges into the one before
/// it when `merge` says they combine, else starts a new one.
pub fn fold_chain(
    chain: Vec<Request>,
    mut merge: impl FnMut(&Request, &Request) -> Option<Request>,
) -> Vec<Combined> {
    let mut kept: Vec<Combined> = Vec::new();
    for request in chain {
        if let Some(last) = kept.last_mut()
            && let Some(merged) = merge(&last.request, &request)
        {
            last.request = merged;
            last.inputs += 1;
            continue;
        }
        kept.push(Combined { request, inputs: 1 });
    }
    kept
}

/// Every update of `chain` on its own (nothing combined).
pub fn apart(chain: Vec<Request>) -> Vec<Combined> {
    chain
        .into_iter()
        .map(|request| Combined { request, inputs: 1 })
        .collect()
}

/// A combiner over a plain merge function, answered at once.
pub fn pairwise(
    merge: impl Fn(&Request, &Request) -> Option<Request> + Send + Sync + 'static,
) -> Combiner {
    let merge = Arc::new(merge);
    Arc::new(move |chains: Vec<Vec<Request>>| {
        let combined = chains
            .into_iter()
            .map(|chain| fold_chain(chain, |o, n| merge(o, n)))
            .collect();
        Box::pin(std::future::ready(combined))
    })
}

/// A combiner for a destination whose updates never combine.
pub fn never() -> Combiner {
    pairwise(|_, _| None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(body: &str) -> Request {
        crate::test_support::patch("1", body)
    }

    /// Concatenates bodies, except that `stop` never merges into anything.
    fn concatenate(older: &Request, newer: &Request) -> Option<Request> {
        (newer.body != "stop").then(|| update(&format!("{}{}", older.body, newer.body)))
    }

    #[test]
    fn a_chain_folds_until_an_update_does_not_combine_then_starts_again() {
        let chain = ["a", "b", "stop", "c", "d"].map(update).to_vec();
        let kept = fold_chain(chain, concatenate);
        let bodies: Vec<(&str, usize)> = kept
            .iter()
            .map(|c| (c.request.body.as_str(), c.inputs))
            .collect();
        assert_eq!(bodies, [("ab", 2), ("stopcd", 3)]);
    }

    #[tokio::test]
    async fn a_pairwise_combiner_answers_each_chain_in_order() {
        let combine = pairwise(concatenate);
        let kept = combine(vec![vec![update("x")], ["a", "stop"].map(update).to_vec()]).await;
        assert_eq!(
            kept[0],
            [Combined {
                request: update("x"),
                inputs: 1
            }]
        );
        assert_eq!(kept[1].len(), 2);
        let kept = never()(vec![["a", "b"].map(update).to_vec()]).await;
        assert_eq!(kept[0].len(), 2, "{kept:?}");
    }
}
