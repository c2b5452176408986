//! `schema.yaml`: the attributes of the customer and of the request context.
//!
//! ```yaml
//! customer:
//!   segment: { type: enum, values: [mass, gold], default: mass, description: ... }
//! context:
//!   channel: { type: enum, values: [web, email] }
//! ```

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};

use super::yaml::{Decoder, loc, node_loc, parse_bool, parse_timestamp, scalar_loc};
use crate::catalog::{ATTRIBUTE_TYPES, CatalogError, Context, Expected, FileRole, Owner, Schema};
use crate::expr::did_you_mean;
use crate::schema::{AttrType, Attribute, EntitySchema, EnumDef, Value};

/// The schema of the file `top`; the attributes with errors are left out of it.
pub(super) fn decode(d: &mut Decoder, top: &MarkedMappingNode) -> Schema {
    let file = Context::File(FileRole::Schema);
    let top = d.fields(top, file.clone(), &["customer", "context"]);
    let mut entities = [EntitySchema::default(), EntitySchema::default()];
    for (i, entity) in ["customer", "context"].into_iter().enumerate() {
        let Some(attrs) = top.optional::<&MarkedMappingNode>(d, entity) else {
            continue;
        };
        for (name, node) in attrs.iter() {
            let qualified = format!("{entity}.{}", name.as_str());
            if !is_ident(name) {
                d.error(
                    scalar_loc(name),
                    CatalogError::Invalid {
                        key: qualified,
                        context: file.clone(),
                        expected: Expected::Name,
                    },
                );
                continue;
            }
            if let Some(attr) = attribute(d, name, node, qualified) {
                entities[i].push(attr);
            }
        }
    }
    let [customer, context] = entities;
    Schema::new(customer, context)
}

fn attribute(
    d: &mut Decoder,
    name: &MarkedScalarNode,
    node: &Node,
    qualified: String,
) -> Option<Attribute> {
    let map = d.decode::<&MarkedMappingNode>(node, &qualified, &Context::File(FileRole::Schema))?;
    let context = Context::Of(Owner::Attribute(qualified));
    let f = d.fields(
        map,
        context.clone(),
        &["type", "values", "default", "description"],
    );
    let ty_node = f.required::<&MarkedScalarNode>(d, "type")?;
    let ty = match ty_node.as_str() {
        "bool" => AttrType::Bool,
        "int" => AttrType::Int,
        "float" => AttrType::Float,
        "string" => AttrType::String,
        "set" => AttrType::Set,
        "timestamp" => AttrType::Timestamp,
        "enum" => {
            let values = f.optional::<Vec<String>>(d, "values").unwrap_or_default();
            let mut unique = values.clone();
            unique.sort();
            unique.dedup();
            if values.is_empty()
                || unique.len() != values.len()
                || values.iter().any(String::is_empty)
            {
                let location = f
                    .optional::<&Node>(d, "values")
                    .map_or_else(|| loc(map.span(), 1), node_loc);
                d.error(
                    location,
                    CatalogError::Invalid {
                        key: "values".into(),
                        context,
                        expected: Expected::EnumValues,
                    },
                );
                return None;
            }
            AttrType::Enum(EnumDef::new(values))
        }
        other => {
            d.error(
                scalar_loc(ty_node),
                CatalogError::Invalid {
                    key: "type".into(),
                    context,
                    expected: Expected::AttributeType {
                        suggestion: did_you_mean(other, ATTRIBUTE_TYPES),
                    },
                },
            );
            return None;
        }
    };
    if !matches!(ty, AttrType::Enum(_))
        && let Some(n) = f.optional::<&Node>(d, "values")
    {
        d.invalid(n, "values", &context, Expected::OnlyForEnum);
    }
    let default = match f.optional::<&Node>(d, "default") {
        None => Value::Missing,
        Some(n) => default_value(n, &ty).unwrap_or_else(|| {
            d.invalid(n, "default", &context, Expected::ValueOf { ty: ty.name() });
            Value::Missing
        }),
    };
    Some(Attribute {
        name: name.to_string(),
        ty,
        default,
        description: f.optional::<String>(d, "description"),
    })
}

/// A name the rule language can read: an identifier that is not a keyword.
fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(s, "true" | "false" | "in")
}

/// A default of type `ty`: a list of strings for a set, a single value otherwise.
fn default_value(node: &Node, ty: &AttrType) -> Option<Value> {
    if let AttrType::Set = ty {
        let items: Option<Vec<&str>> = node
            .as_sequence()?
            .iter()
            .map(|n| n.as_scalar().map(|s| s.as_str()))
            .collect();
        return Some(Value::set(items?));
    }
    let s = node.as_scalar()?.as_str();
    match ty {
        AttrType::Bool => parse_bool(s).map(Value::Bool),
        AttrType::Int => s.parse().ok().map(Value::Int),
        AttrType::Float => s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::Float),
        AttrType::String => Some(Value::Str(s.into())),
        AttrType::Enum(def) => def.index_of(s).map(Value::Enum),
        AttrType::Timestamp => parse_timestamp(s).map(Value::Timestamp),
        AttrType::Set => None,
    }
}
