//! An email renderer that decides when the email is opened: the image in an email's hero
//! block points here, and every open asks nextbest for `email.hero`, records the
//! impression and returns the HTML block. Exploration draws are stable per customer and
//! time window, so the web banner explores exactly when the email does, and shows the same
//! explored offer where the offer ranked first is a candidate in both placements.
//!
//! ```sh
//! cargo run --release -- serve                     # in one terminal
//! cargo run --example email_open_renderer          # in another, then:
//! curl http://127.0.0.1:8080/email/spring/cust-0042/hero.html
//! ```
//! Options: `-- [NEXTBEST_ADDR] [LISTEN]`, default `http://127.0.0.1:50051` and
//! `127.0.0.1:8080`. On start it renders one email for `cust-0042` itself and shows that
//! customer's web banner decision next to it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Html;
use nextbest::server::proto;
use nextbest::server::proto::decision_service_client::DecisionServiceClient;
use tonic::transport::Channel;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Decides the hero block for one open and records the impression.
async fn render(
    mut client: DecisionServiceClient<Channel>,
    campaign: &str,
    customer: &str,
) -> Result<String, tonic::Status> {
    let d = client
        .decide(proto::DecideRequest {
            customer_id: customer.into(),
            placement: "email.hero".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let Some(offer) = d.offers.first() else {
        // A contact cap or fatigue: the email shows its neutral block.
        return Ok(format!(
            "<!-- {campaign}: nothing to offer ({}) -->\n<div class=\"hero\">Thanks for being with us.</div>\n",
            escape(&d.suppressed)
        ));
    };
    client
        .record_outcome(proto::Outcome {
            decision_id: d.decision_id.clone(),
            offer_id: offer.offer_id.clone(),
            kind: proto::OutcomeKind::Impression as i32,
            ..Default::default()
        })
        .await?;
    let field = |k: &str| escape(offer.content.get(k).map_or("", String::as_str));
    Ok(format!(
        "<!-- campaign {campaign}, decision {}, offer {}, p={:.3}{} -->\n<div class=\"hero\">\n  <img src=\"{}\" alt=\"\">\n  <h1>{}</h1>\n  <a class=\"cta\">{}</a>\n</div>\n",
        d.decision_id,
        offer.offer_id,
        offer.propensity,
        if offer.explored { ", explored" } else { "" },
        field("image_url"),
        field("title"),
        field("cta")
    ))
}

async fn hero(
    State(client): State<DecisionServiceClient<Channel>>,
    Path((campaign, customer, file)): Path<(String, String, String)>,
) -> Result<Html<String>, (StatusCode, String)> {
    if file != "hero.html" {
        return Err((StatusCode::NOT_FOUND, format!("no `{file}` here")));
    }
    render(client, &campaign, &customer)
        .await
        .map(Html)
        .map_err(|s| {
            (
                StatusCode::BAD_GATEWAY,
                format!("nextbest: {}", s.message()),
            )
        })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let listen = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let client = DecisionServiceClient::connect(addr).await?;

    // One open, rendered here, and the same customer's web banner a moment later.
    println!("An email opened by cust-0042:\n");
    println!("{}", render(client.clone(), "spring", "cust-0042").await?);
    let web = client
        .clone()
        .decide(proto::DecideRequest {
            customer_id: "cust-0042".into(),
            placement: "web.home_banner".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "The same customer on the web home page ({} {}): {}",
        web.experiment,
        web.arm,
        web.offers
            .iter()
            .map(|o| format!(
                "{}{}",
                o.offer_id,
                if o.explored { " (explored)" } else { "" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let app = axum::Router::new()
        .route(
            "/email/{campaign}/{customer}/{file}",
            axum::routing::get(hero),
        )
        .with_state(client);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("\nserving http://{listen}/email/{{campaign}}/{{customer}}/hero.html until Ctrl-C");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
