//! What discovery asks of the identity service (which owns actors and their secrets): which
//! actors are registered here (`GetActor`) and whether a sensitive-action solution is right
//! (`VerifySensitiveSolution`). Behind a trait so that service tests can run the discovery RPCs
//! against real storage without an identity service.

use p2_model::FederationId;
use p2_proto::common::v1::CallerAssertion;
use p2_proto::identity::v1 as identity;
use p2_proto::identity::v1::identity_client::IdentityClient;
use p2_runtime::grpc::TracedChannel;

use crate::error::DiscoveryError;

/// An actor registered on this home server, as far as discovery cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalActor {
    /// The normalised FID.
    pub fid: String,
    /// The target FID when the actor set up a migration redirect (spec 7.1.1).
    pub redirect_to: Option<String>,
}

/// Looks actors up.
#[tonic::async_trait]
pub trait ActorDirectory: Send + Sync + 'static {
    /// The actor `fid` if it is registered on this home server, `None` otherwise.
    async fn actor(&self, fid: &FederationId) -> Result<Option<LocalActor>, DiscoveryError>;

    /// Checks the sensitive-action solution of the actor of `assertion` (forwarded as it came).
    /// [`DiscoveryError::SolutionRefused`] when it is missing or wrong.
    async fn check_sensitive_solution(
        &self,
        assertion: &CallerAssertion,
        solution: &str,
    ) -> Result<(), DiscoveryError>;
}

/// The production directory: the identity service's `GetActor`.
#[derive(Clone)]
pub struct IdentityDirectory {
    client: IdentityClient<TracedChannel>,
}

impl IdentityDirectory {
    /// A directory asking the identity service at `url` (connects lazily), presenting
    /// `credential`.
    pub fn connect(
        url: &str,
        credential: &p2_runtime::internal::ComponentCredential,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: IdentityClient::new(p2_runtime::grpc::channel(url, credential)?),
        })
    }
}

#[tonic::async_trait]
impl ActorDirectory for IdentityDirectory {
    async fn actor(&self, fid: &FederationId) -> Result<Option<LocalActor>, DiscoveryError> {
        let answer = self
            .client
            .clone()
            .get_actor(identity::GetActorRequest {
                fid: fid.as_str().to_owned(),
            })
            .await;
        match answer {
            Ok(response) => {
                let actor = response.into_inner();
                Ok(Some(LocalActor {
                    fid: actor.fid,
                    redirect_to: actor.redirect_to.filter(|target| !target.is_empty()),
                }))
            }
            Err(status) => match status.code() {
                tonic::Code::NotFound => Ok(None),
                tonic::Code::InvalidArgument => {
                    Err(DiscoveryError::InvalidArgument(status.message().to_owned()))
                }
                _ => Err(unexpected(status, "identity.GetActor")),
            },
        }
    }

    async fn check_sensitive_solution(
        &self,
        assertion: &CallerAssertion,
        solution: &str,
    ) -> Result<(), DiscoveryError> {
        let answer = self
            .client
            .clone()
            .verify_sensitive_solution(identity::VerifySensitiveSolutionRequest {
                caller: Some(assertion.clone()),
                solution: solution.to_owned(),
            })
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(status) => match status.code() {
                // Wrong or missing, or too many wrong ones lately (throttled, with a hint).
                tonic::Code::PermissionDenied | tonic::Code::ResourceExhausted => {
                    Err(DiscoveryError::SolutionRefused(status))
                }
                // Identity's password queue is full: pass its answer (and retry hint) on.
                tonic::Code::Unavailable
                    if p2_runtime::error::retry_after_of(&status).is_some() =>
                {
                    Err(DiscoveryError::SolutionRefused(status))
                }
                tonic::Code::Unauthenticated => Err(DiscoveryError::Assertion(
                    p2_runtime::internal::AssertionError::Invalid,
                )),
                _ => Err(unexpected(status, "identity.VerifySensitiveSolution")),
            },
        }
    }
}

/// An identity failure discovery cannot act on: an outage stays retryable, the rest is internal.
fn unexpected(status: tonic::Status, rpc: &str) -> DiscoveryError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            DiscoveryError::Unavailable(format!("identity: {}", status.message()))
        }
        code => DiscoveryError::Internal(anyhow::anyhow!(
            "{rpc} failed: {code:?}: {}",
            status.message()
        )),
    }
}
