//! The `polyproto.discovery.v1.Discovery` handlers: verify the caller assertion (the actor
//! whose table changes is the asserted one), convert at the edge (FID, service name, URL,
//! limit into domain types, failing fast with `INVALID_ARGUMENT`), ask the directory and the
//! store, map back.

use std::sync::Arc;

use p2_model::FederationId;
use p2_proto::common::v1 as common;
use p2_proto::discovery::v1 as pb;
use tonic::{Request, Response, Status};

use crate::directory::ActorDirectory;
use crate::error::DiscoveryError;
use crate::model::{Limit, ProviderUrl, ServiceName};
use crate::store::{AtLimit, Refused, Store};
use p2_runtime::internal::AssertionKey;

/// The most providers one actor may list (all services together), unless
/// [`DiscoveryGrpc::with_max_providers_per_actor`] says otherwise. At the bound an add answers
/// FAILED_PRECONDITION ([`DiscoveryError::TooManyProviders`]) until the actor removes some.
pub const MAX_PROVIDERS_PER_ACTOR: u64 = 1000;

/// The most providers one `RemoveService` call may name.
pub const MAX_REMOVALS_PER_CALL: usize = 100;

/// The gRPC handler set of the discovery service. Cheap to clone.
#[derive(Clone)]
pub struct DiscoveryGrpc {
    store: Store,
    directory: Arc<dyn ActorDirectory>,
    assertions: AssertionKey,
    max_providers_per_actor: u64,
}

impl DiscoveryGrpc {
    /// Handlers over `store`, asking `directory` which actors are registered here and
    /// verifying caller assertions with `assertions`.
    pub fn new(store: Store, directory: Arc<dyn ActorDirectory>, assertions: AssertionKey) -> Self {
        Self {
            store,
            directory,
            assertions,
            max_providers_per_actor: MAX_PROVIDERS_PER_ACTOR,
        }
    }

    /// The same handlers letting one actor list at most `limit` providers instead of
    /// [`MAX_PROVIDERS_PER_ACTOR`] (tests use small bounds).
    pub fn with_max_providers_per_actor(mut self, limit: u64) -> Self {
        self.max_providers_per_actor = limit;
        self
    }

    /// The most providers one actor may list.
    pub fn max_providers_per_actor(&self) -> u64 {
        self.max_providers_per_actor
    }

    /// The store (for tests and tooling).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

fn invalid_fid(error: p2_model::ModelError) -> DiscoveryError {
    DiscoveryError::InvalidArgument(error.to_string())
}

impl DiscoveryGrpc {
    /// The actor a caller assertion proves.
    fn caller_fid(
        &self,
        caller: Option<&common::CallerAssertion>,
    ) -> Result<FederationId, DiscoveryError> {
        let token = caller.map(|c| c.token.as_slice()).unwrap_or_default();
        let verified = self
            .assertions
            .verify(token, p2_runtime::internal::unix_now_ms())?;
        FederationId::parse(&verified.fid)
            .map_err(|_| DiscoveryError::Assertion(p2_runtime::internal::AssertionError::Invalid))
    }

    /// The sensitive-action check, by identity, of the asserted actor's `solution`.
    async fn check_solution(
        &self,
        caller: Option<&common::CallerAssertion>,
        solution: Option<&str>,
    ) -> Result<bool, DiscoveryError> {
        match (caller, solution.filter(|s| !s.is_empty())) {
            (Some(caller), Some(solution)) => {
                self.directory
                    .check_sensitive_solution(caller, solution)
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn add_provider(
        &self,
        request: pb::AddServiceRequest,
    ) -> Result<pb::AddServiceResponse, DiscoveryError> {
        let fid = self.caller_fid(request.caller.as_ref())?;
        let provider = request.provider.ok_or_else(|| {
            DiscoveryError::InvalidArgument("the request carries no provider".to_owned())
        })?;
        let service = ServiceName::parse(&provider.service)?;
        let url = ProviderUrl::parse(&provider.url)?;
        if self.directory.actor(&fid).await?.is_none() {
            return Err(DiscoveryError::NotLocalActor {
                fid: fid.to_string(),
            });
        }
        // A bound per actor (CONVENTIONS 17), taken in the insert's transaction: concurrent
        // adds cannot pass it.
        let limit = self.max_providers_per_actor;
        let added = self
            .store
            .add(fid.as_str(), &service, &url, provider.primary, limit)
            .await?
            .map_err(|AtLimit| DiscoveryError::TooManyProviders { limit })?;
        tracing::info!(fid = %fid, service = %service, url = %added.url, primary = added.primary, "added service provider");
        Ok(pb::AddServiceResponse {
            provider: Some(added.into()),
        })
    }

    async fn remove_providers(
        &self,
        request: pb::RemoveServiceRequest,
    ) -> Result<pb::RemoveServiceResponse, DiscoveryError> {
        let fid = self.caller_fid(request.caller.as_ref())?;
        if request.providers.is_empty() {
            return Err(DiscoveryError::InvalidArgument(
                "name at least one provider to remove (service name and URL)".to_owned(),
            ));
        }
        if request.providers.len() > MAX_REMOVALS_PER_CALL {
            return Err(DiscoveryError::InvalidArgument(format!(
                "at most {MAX_REMOVALS_PER_CALL} providers can be removed in one request, not {}",
                request.providers.len()
            )));
        }
        let providers = request
            .providers
            .iter()
            .map(|key| {
                Ok((
                    ServiceName::parse(&key.service)?,
                    ProviderUrl::parse(&key.url)?,
                ))
            })
            .collect::<Result<Vec<_>, DiscoveryError>>()?;
        // Only a primary's removal needs the solution, and which providers are primary is
        // decided in the store's transaction: a solution that was sent is checked up front.
        let solved = self
            .check_solution(
                request.caller.as_ref(),
                request.sensitive_solution.as_deref(),
            )
            .await?;
        // The rule (spec 9.1.1): removing a primary is a sensitive action.
        let removal = match self.store.remove(fid.as_str(), &providers, solved).await? {
            Ok(removal) => removal,
            Err(Refused::Primary(primary)) => {
                return Err(DiscoveryError::SensitiveActionRequired {
                    service: primary.service,
                    url: primary.url,
                });
            }
        };
        for provider in &removal.removed {
            tracing::info!(fid = %fid, service = %provider.service, url = %provider.url, "removed service provider");
        }
        for provider in &removal.promoted {
            tracing::info!(fid = %fid, service = %provider.service, url = %provider.url, "promoted service provider");
        }
        Ok(pb::RemoveServiceResponse {
            removed: removal.removed.into_iter().map(Into::into).collect(),
            promoted: removal.promoted.into_iter().map(Into::into).collect(),
        })
    }

    async fn change_primary(
        &self,
        request: pb::SetPrimaryRequest,
    ) -> Result<pb::SetPrimaryResponse, DiscoveryError> {
        let fid = self.caller_fid(request.caller.as_ref())?;
        let service = ServiceName::parse(&request.service)?;
        let url = ProviderUrl::parse(&request.url)?;
        // A sensitive action (spec 9.1.1): parsed first, so bad input costs no password hash.
        if !self
            .check_solution(request.caller.as_ref(), Some(&request.sensitive_solution))
            .await?
        {
            return Err(DiscoveryError::SolutionRefused(
                p2_runtime::error::Reason::SensitiveSolutionRequired.denied(
                    "changing the primary provider of a service is a sensitive action that \
                     needs the actor's password as its solution",
                ),
            ));
        }
        let changed = self.store.set_primary(fid.as_str(), &service, &url).await?;
        tracing::info!(fid = %fid, service = %service, url = %url.as_str(), "set primary service provider");
        Ok(pb::SetPrimaryResponse {
            providers: changed.into_iter().map(Into::into).collect(),
        })
    }

    async fn discover_providers(
        &self,
        request: pb::DiscoverRequest,
    ) -> Result<pb::DiscoverResponse, DiscoveryError> {
        let fid = FederationId::parse(&request.fid).map_err(invalid_fid)?;
        let service = request
            .service
            .as_deref()
            .map(ServiceName::parse)
            .transpose()?;
        let limit = Limit::from_request(request.limit)?;
        // One identity lookup and one query, side by side.
        let (actor, providers) = tokio::join!(
            self.directory.actor(&fid),
            self.store.list(fid.as_str(), service.as_ref(), limit)
        );
        let actor = actor?.ok_or_else(|| DiscoveryError::ActorNotFound {
            fid: fid.to_string(),
        })?;
        Ok(pb::DiscoverResponse {
            providers: providers?.into_iter().map(Into::into).collect(),
            redirect_to: actor.redirect_to,
        })
    }
}

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryGrpc {
    #[tracing::instrument(skip_all)]
    async fn add_service(
        &self,
        request: Request<pb::AddServiceRequest>,
    ) -> Result<Response<pb::AddServiceResponse>, Status> {
        Ok(Response::new(
            self.add_provider(request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn remove_service(
        &self,
        request: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        Ok(Response::new(
            self.remove_providers(request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn set_primary(
        &self,
        request: Request<pb::SetPrimaryRequest>,
    ) -> Result<Response<pb::SetPrimaryResponse>, Status> {
        Ok(Response::new(
            self.change_primary(request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn discover(
        &self,
        request: Request<pb::DiscoverRequest>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        Ok(Response::new(
            self.discover_providers(request.into_inner()).await?,
        ))
    }
}
