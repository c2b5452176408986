//! Any bytes as the protobuf of a Decide or Upsert request, converted as the server
//! converts them: decoding and conversion never panic, and a converted value has the
//! attribute's type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nextbest::server::convert;
use nextbest::server::proto;
use prost::Message;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static CATALOG: OnceLock<nextbest::catalog::Catalog> = OnceLock::new();
    let catalog = CATALOG.get_or_init(|| {
        let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
        nextbest::catalog::Catalog::load(&rules).expect("the sample catalog loads")
    });
    let schema = &catalog.schema;
    if let Ok(r) = proto::DecideRequest::decode(data) {
        let _ = convert::values("context", &schema.context, &r.context);
        let _ = convert::values("customer", &schema.customer, &r.attributes);
        if let Some(at) = &r.at {
            let _ = convert::timestamp(convert::millis(at));
        }
    }
    if let Ok(r) = proto::UpsertRequest::decode(data)
        && let Ok(values) = convert::values("customer", &schema.customer, &r.attributes)
    {
        for (value, attribute) in values.iter().zip(schema.customer.attributes()) {
            if !value.is_missing() {
                assert!(convert::proto_value(value, &attribute.ty).is_some());
            }
        }
    }
    if let Ok(o) = proto::Outcome::decode(data) {
        let _ = convert::kind(o.kind);
    }
});
