//! One ACME order (RFC 8555 §7.4): new order, answer each pending authorization through the
//! challenge publisher, wait for the CA, finalize with a fresh key, download the full chain.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::challenges::{ChallengeKind, ChallengePublisher, PendingChallenge};

/// How long the CA may take to validate every authorization, and then to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an order did not produce a certificate. The message carries the CA's problem detail
/// when it sent one.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("ACME CA: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the CA offers no {kind} challenge for {host}")]
    NoChallenge { kind: &'static str, host: String },
    #[error("authorization for {host} is {status}")]
    Authorization { host: String, status: String },
    #[error("validation failed: {0}")]
    Invalid(String),
    #[error("challenge answer not published: {0}")]
    Publish(String),
    #[error("certificate key or CSR: {0}")]
    Key(#[from] rcgen::Error),
}

/// An issued certificate: the full chain (leaf first) and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// Order a certificate for `hosts`, answering with `kind` through `publisher`. Every
/// published answer is withdrawn again, whatever the outcome.
pub async fn issue(
    account: &Account,
    hosts: &[String],
    kind: ChallengeKind,
    publisher: &dyn ChallengePublisher,
) -> Result<Issued, OrderError> {
    let mut published = Vec::new();
    let result = run(account, hosts, kind, publisher, &mut published).await;
    for c in &published {
        if let Err(e) = publisher.withdraw(c).await {
            tracing::warn!(domain = %c.domain, error = %e, "could not withdraw an ACME challenge answer");
        }
    }
    result
}

async fn run(
    account: &Account,
    hosts: &[String],
    kind: ChallengeKind,
    publisher: &dyn ChallengePublisher,
    published: &mut Vec<PendingChallenge>,
) -> Result<Issued, OrderError> {
    let identifiers: Vec<Identifier> = hosts.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    tracing::info!(hosts = ?hosts, order = %order.url(), "ACME order placed");

    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        let host = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(OrderError::Authorization {
                    host,
                    status: format!("{other:?}").to_lowercase(),
                })
            }
        }
        let mut challenge = authorization
            .challenge(challenge_type(kind))
            .ok_or_else(|| OrderError::NoChallenge {
                kind: kind.as_str(),
                host: host.clone(),
            })?;
        let pending = PendingChallenge {
            kind,
            domain: host,
            token: challenge.token.clone(),
            key_authorization: challenge.key_authorization().as_str().to_string(),
        };
        // The answer must be served (by every replica) before the CA is told to look.
        publisher
            .publish(&pending)
            .await
            .map_err(|e| OrderError::Publish(e.to_string()))?;
        published.push(pending);
        challenge.set_ready().await?;
    }

    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION_TIMEOUT);
    let status = match order.poll_ready(&retry).await {
        Ok(status) => status,
        Err(instant_acme::Error::Api(problem)) => {
            return Err(OrderError::Invalid(
                validation_problem(&mut order)
                    .await
                    .unwrap_or(problem.to_string()),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if status != OrderStatus::Ready {
        return Err(OrderError::Invalid(
            validation_problem(&mut order)
                .await
                .unwrap_or_else(|| format!("order is {status:?}")),
        ));
    }

    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(ISSUANCE_TIMEOUT);
    let chain_pem = order.poll_certificate(&retry).await?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The CA's problem document of the first failed challenge ("host: detail (type)").
async fn validation_problem(order: &mut instant_acme::Order) -> Option<String> {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        let host = state.identifier().to_string();
        if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
            return Some(format!("{host}: {problem}"));
        }
    }
    None
}
