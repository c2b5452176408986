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
        if let Ok(at) = convert::decision_time(r.at.as_ref(), || 0) {
            // A decision time that passed the checks is a time again.
            assert_eq!(convert::millis("at", &convert::timestamp(at)).ok(), Some(at));
        }
    }
    if let Ok(r) = proto::UpsertRequest::decode(data)
        && let Ok(values) = convert::values("customer", &schema.customer, &r.attributes)
    {
        for (value, attribute) in values.iter().zip(schema.customer.attributes()) {
            if !value.is_missing() {
                // Every accepted value converts back, and to itself: nothing is lost.
                let back = convert::proto_value(value, &attribute.ty).expect("converts back");
                let again = convert::values(
                    "customer",
                    &schema.customer,
                    &[(attribute.name.clone(), back)].into(),
                )
                .expect("a converted value is accepted again");
                assert_eq!(&again[schema.customer.slot(&attribute.name).expect("slot") as usize], value);
            }
        }
    }
    if let Ok(o) = proto::Outcome::decode(data) {
        let _ = convert::kind(o.kind);
    }
});
