//! Leader election for status writes. Several pilots serve proxies at
//! once, but one writes the rules' status: the holder of the Lease
//! `mesh-pilot` in pilot's namespace (`coordination.k8s.io`, as
//! Kubernetes' own controllers elect theirs). The holder renews it every
//! [`RENEW_EVERY`]; one that stops for [`LEASE_DURATION`] loses it to the
//! next pilot that tries. A write lost to a race (the Lease's
//! resourceVersion moved) leaves the other pilot leading.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// The Lease's name.
pub const LEASE_NAME: &str = "mesh-pilot";
/// How long a holder that stopped renewing keeps the Lease.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews it (and the others look).
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Whether this pilot leads, kept up to date by a task that runs while
/// the receiver lives; `identity` names this pilot in the Lease (its pod).
pub fn elect(client: Client, namespace: &str, identity: String) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, namespace);
    tokio::spawn(async move {
        loop {
            let leading = match try_lead(&api, &identity).await {
                Ok(leading) => leading,
                Err(e) => {
                    warn!("leader lease {LEASE_NAME}: {e}");
                    false
                }
            };
            if *tx.borrow() != leading {
                info!(
                    leading,
                    identity,
                    "rule status writes: {}",
                    if leading {
                        "this pilot leads"
                    } else {
                        "another pilot leads"
                    }
                );
                tx.send_replace(leading);
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(RENEW_EVERY).await;
        }
    });
    rx
}

/// One round: take the Lease when it is free or expired, renew it when
/// held; whether this pilot holds it afterwards.
async fn try_lead(api: &Api<Lease>, me: &str) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                labels: Some([("app.kubernetes.io/part-of".to_owned(), "mesh".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.to_owned()),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return won(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder != me {
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let lasts = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let expired =
            renewed.is_none_or(|t| now.0.duration_since(t).unsigned_abs() > lasts && now.0 > t);
        if !holder.is_empty() && !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(me.to_owned());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
    spec.renew_time = Some(now);
    // resourceVersion travels with it: a replace after another pilot's
    // write fails with a conflict, and that pilot leads.
    won(api
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await)
}

/// A create or replace that lost a race means another pilot leads.
fn won(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
