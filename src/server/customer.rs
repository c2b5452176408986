//! `CustomerService`: upsert, get and forget customers (behind the admin token, when the
//! node has one).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, status};
use super::proto::{self, customer_service_server::CustomerService};
use super::{Deadline, Service, blocking, required};
use crate::schema::printable;
use crate::setup::now_ms;

#[tonic::async_trait]
impl CustomerService for Service {
    async fn upsert(
        &self,
        request: Request<proto::UpsertRequest>,
    ) -> Result<Response<proto::UpsertResponse>, Status> {
        async {
            self.authorize(&request)?;
            let deadline = Deadline::of(&request);
            let r = request.into_inner();
            let id = required("customer_id", &r.customer_id)?.to_string();
            let catalog = self.node.db().catalog();
            let values = convert::values("customer", &catalog.schema.customer, &r.attributes)?;
            if let Some(cluster) = self.node.cluster() {
                deadline.check()?;
                let written = cluster
                    .upsert(&catalog, &id, values, now_ms())
                    .await
                    .map_err(convert::cluster_status)?;
                return Ok(Response::new(proto::UpsertResponse {
                    position: written.position,
                }));
            }
            let node = Arc::clone(&self.node);
            blocking(move || {
                deadline.check()?;
                node.db()
                    .upsert(&catalog, &id, values, now_ms(), true)
                    .map_err(status)
            })
            .await?;
            Ok(Response::new(proto::UpsertResponse { position: 0 }))
        }
        .await
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::Customer>, Status> {
        async {
            self.authorize(&request)?;
            let r = request.into_inner();
            let id = required("customer_id", &r.customer_id)?;
            let db = self.node.db();
            let catalog = db.catalog();
            db.store()
                .with(id, |s| {
                    s.map(|s| convert::customer(&catalog, s, r.history_limit as usize))
                })
                .map_err(|e| status(e.into()))?
                .map(Response::new)
                .ok_or_else(|| Status::not_found(format!("no customer `{}`", printable(id))))
        }
        .await
    }

    async fn forget(
        &self,
        request: Request<proto::ForgetRequest>,
    ) -> Result<Response<proto::ForgetResponse>, Status> {
        async {
            self.authorize(&request)?;
            let deadline = Deadline::of(&request);
            let id = required("customer_id", &request.into_inner().customer_id)?.to_string();
            if let Some(cluster) = self.node.cluster() {
                deadline.check()?;
                let (existed, written) = cluster
                    .forget(&id, now_ms())
                    .await
                    .map_err(convert::cluster_status)?;
                return Ok(Response::new(proto::ForgetResponse {
                    existed,
                    position: written.position,
                }));
            }
            let node = Arc::clone(&self.node);
            let existed = blocking(move || {
                deadline.check()?;
                node.db().forget(&id, now_ms()).map_err(status)
            })
            .await?;
            Ok(Response::new(proto::ForgetResponse {
                existed,
                position: 0,
            }))
        }
        .await
    }
}
