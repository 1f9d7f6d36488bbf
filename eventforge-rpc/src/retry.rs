//! `RetryPolicy`: how often and how patiently to try again.
//!
//! Shared by every layer that retries (RPC clients today). The policy
//! decides the delays (exponential backoff with jitter) and which
//! [`RpcErrorKind`]s are worth another attempt; [`with_retry`] wraps any
//! RPC caller with it and keeps the `call` surface.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::call_typed;
use crate::{CallBuilder, IntoArgs, RpcCall, RpcCaller, RpcError, RpcErrorKind};

/// When and how often to try again.
///
/// Defaults: 3 attempts in all, 50 ms before the second, doubling up to 2 s,
/// ±20 % jitter; retries timeouts, no responders and transport failures,
/// never an answer of the server (a remote error or an unknown method).
///
/// ```
/// use std::time::Duration;
/// use eventforge_rpc::RetryPolicy;
/// use eventforge_rpc::RpcErrorKind;
///
/// let policy = RetryPolicy::new()
///     .max_attempts(5)
///     .initial_backoff(Duration::from_millis(10))
///     .multiplier(3.0)
///     .max_backoff(Duration::from_millis(100))
///     .jitter(0.0)
///     .retry_on([RpcErrorKind::Timeout]);
/// assert_eq!(policy.backoff(1), Duration::from_millis(10));
/// assert_eq!(policy.backoff(2), Duration::from_millis(30));
/// assert_eq!(policy.backoff(4), Duration::from_millis(100));
/// assert!(policy.retries(RpcErrorKind::Timeout));
/// assert!(!policy.retries(RpcErrorKind::Transport));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    multiplier: f64,
    max_backoff: Duration,
    // Fraction of each delay drawn at random, so that many callers that
    // failed together do not retry in lockstep.
    jitter: f64,
    retry_on: HashSet<RpcErrorKind>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(2),
            jitter: 0.2,
            retry_on: [
                RpcErrorKind::Timeout,
                RpcErrorKind::NoResponders,
                RpcErrorKind::Transport,
            ]
            .into_iter()
            .collect(),
        }
    }
}

impl RetryPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attempts in all, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Delay before the second attempt.
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.initial_backoff = delay;
        self
    }

    /// Factor applied to the delay after each attempt (at least 1).
    pub fn multiplier(mut self, factor: f64) -> Self {
        self.multiplier = if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Upper bound of any delay.
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// Fraction of each delay drawn at random, 0.0 (none) to 1.0.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Exactly which error kinds are retried.
    pub fn retry_on(mut self, kinds: impl IntoIterator<Item = RpcErrorKind>) -> Self {
        self.retry_on = kinds.into_iter().collect();
        self
    }

    /// The attempts allowed, the first included.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// True when an error of `kind` is retried.
    pub fn retries(&self, kind: RpcErrorKind) -> bool {
        self.retry_on.contains(&kind)
    }

    /// The delay after failed attempt `attempt` (1-based), before jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let seconds = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = seconds.min(self.max_backoff.as_secs_f64());
        Duration::try_from_secs_f64(capped).unwrap_or(self.max_backoff)
    }

    /// The delay after failed attempt `attempt`, with jitter applied.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.backoff(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        // uniform in [-1, 1)
        let unit = (random_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        base.mul_f64((1.0 + self.jitter * unit).max(0.0))
    }

    /// Runs `operation` (given the 1-based attempt number) until it
    /// succeeds, fails with an error `retryable` rejects, or the attempts
    /// run out; sleeps [`delay`](Self::delay) between attempts. Returns the
    /// last error.
    pub async fn run<T, E, Op, Fut>(
        &self,
        mut operation: Op,
        retryable: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        Op: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        let mut attempt = 1;
        loop {
            match operation(attempt).await {
                Ok(value) => return Ok(value),
                Err(error) if attempt < self.max_attempts && retryable(&error) => {
                    let delay = self.delay(attempt);
                    tracing::debug!(attempt, ?delay, %error, "retrying after a transient failure");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// An RPC caller that retries failed calls per its [`RetryPolicy`].
///
/// Each attempt is a new request (a new request id): a call that timed
/// out may have run on the server, so retrying timeouts suits methods that
/// are safe to run twice.
#[derive(Debug, Clone)]
pub struct Retrying<C> {
    caller: C,
    policy: RetryPolicy,
}

/// Wraps `caller` (a client, a pool) so that its calls are retried per `policy`.
///
/// ```
/// use std::time::Duration;
/// use eventforge_rpc::{with_retry, RetryPolicy};
/// use eventforge_rpc::{RpcClient, RpcError};
/// use eventforge_core::MessageQueue;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = RpcClient::new(MessageQueue::memory()).service("absent");
/// let policy = RetryPolicy::new().max_attempts(2).initial_backoff(Duration::from_millis(1));
/// let retrying = with_retry(client, policy);
/// let err = retrying.call::<i64>("add", (1, 2)).await.unwrap_err();
/// assert!(matches!(err, RpcError::NoResponders { .. }));
/// # }
/// ```
pub fn with_retry<C: RpcCaller>(caller: C, policy: RetryPolicy) -> Retrying<C> {
    Retrying { caller, policy }
}

impl<C: RpcCaller> Retrying<C> {
    /// The wrapped caller.
    pub fn inner(&self) -> &C {
        &self.caller
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Calls `method` with positional `args`, retrying per the policy.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl IntoArgs,
    ) -> Result<R, RpcError> {
        call_typed(self, method, args).await
    }

    /// A builder for a call with named arguments or its own deadline.
    pub fn method(&self, method: impl Into<String>) -> CallBuilder<'_, Self> {
        CallBuilder::new(self, method)
    }
}

#[async_trait]
impl<C: RpcCaller> RpcCaller for Retrying<C> {
    async fn invoke(&self, call: RpcCall) -> Result<Value, RpcError> {
        let call = &call;
        self.policy
            .run(
                |_attempt| self.caller.invoke(call.clone()),
                |error: &RpcError| self.policy.retries(error.kind()),
            )
            .await
    }

    fn is_available(&self) -> bool {
        self.caller.is_available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_fraction() {
        let policy = RetryPolicy::new()
            .initial_backoff(Duration::from_millis(100))
            .jitter(0.5);
        for _ in 0..200 {
            let delay = policy.delay(1);
            assert!(delay >= Duration::from_millis(50) && delay <= Duration::from_millis(150));
        }
    }

    #[test]
    fn default_policy_never_retries_an_answer_of_the_server() {
        let policy = RetryPolicy::default();
        assert!(policy.retries(RpcErrorKind::Timeout));
        assert!(policy.retries(RpcErrorKind::Transport));
        assert!(!policy.retries(RpcErrorKind::Remote));
        assert!(!policy.retries(RpcErrorKind::MethodNotFound));
    }
}
