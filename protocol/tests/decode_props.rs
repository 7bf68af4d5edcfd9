//! Property tests for the decoders: whatever arrives from the broker, decoding returns a
//! value or a `DecodeError` and never panics; every message this crate can build survives
//! encode → decode unchanged; a message from another schema version is refused by version.

use chrono::{DateTime, Utc};
use opflow_protocol::{
    DecodeError, Event, EventId, EventKind, LogLevel, OpName, OpRef, RunId, SCHEMA_VERSION, StepId,
    StepInput, StepMessage,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Few enough cases that the whole file runs in about a second.
fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

/// A float with at most ten significant decimal digits. serde_json (built without its
/// `float_roundtrip` feature) may read an arbitrary `f64`, e.g. `182089.61486816406`, back
/// one ulp off; short decimals, which is what plans and most outputs hold, read back exactly.
fn exact_float() -> impl Strategy<Value = f64> {
    (any::<i32>(), 0i32..7).prop_map(|(m, k)| f64::from(m) / 10f64.powi(k))
}

fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        exact_float().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    json_scalar().prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(any::<String>(), json_value(), 0..4).prop_map(|m| m.into_iter().collect())
}

fn op_ref() -> impl Strategy<Value = OpRef> {
    ("[a-z]([a-z0-9-]{0,20}[a-z0-9])?", any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
        |(name, major, minor, patch)| {
            let name = OpName::new(name).expect("the pattern only makes valid op names");
            OpRef::new(name, semver::Version::new(major.into(), minor.into(), patch.into()))
        },
    )
}

fn run_id() -> impl Strategy<Value = RunId> {
    any::<u128>().prop_map(|n| RunId::from_uuid(Uuid::from_u128(n)))
}

fn step_input() -> impl Strategy<Value = StepInput> {
    (any::<String>(), any::<u32>(), proptest::option::of(any::<String>()), json_object(), json_value())
        .prop_map(|(asset, step, partition, point, output)| StepInput {
            asset,
            step_id: StepId(step),
            partition,
            point,
            output,
        })
}

fn step_message() -> impl Strategy<Value = StepMessage> {
    (
        (run_id(), any::<u32>(), any::<u32>(), op_ref(), any::<String>()),
        (
            proptest::option::of(any::<String>()),
            json_object(),
            json_value(),
            proptest::collection::vec(step_input(), 0..3),
            proptest::option::of(any::<u64>()),
        ),
    )
        .prop_map(|((run, step, attempt, op, asset), (partition, point, config, inputs, timeout_ms))| {
            let mut message = StepMessage::new(run, StepId(step), attempt, op, asset);
            message.partition = partition;
            message.point = point;
            message.config = config;
            message.inputs = inputs;
            message.timeout_ms = timeout_ms;
            message
        })
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    let level =
        prop_oneof![Just(LogLevel::Debug), Just(LogLevel::Info), Just(LogLevel::Warn), Just(LogLevel::Error)];
    prop_oneof![
        op_ref().prop_map(|op| EventKind::Started { op }),
        (exact_float(), proptest::option::of(any::<String>()))
            .prop_map(|(fraction, message)| EventKind::Progress { fraction, message }),
        (level, any::<String>()).prop_map(|(level, message)| EventKind::Log { level, message }),
        json_value().prop_map(|metadata| EventKind::Materialized { metadata }),
        (any::<String>(), any::<bool>(), proptest::option::of(any::<String>()))
            .prop_map(|(name, passed, detail)| EventKind::CheckResult { name, passed, detail }),
        json_value().prop_map(|output| EventKind::Succeeded { output }),
        (any::<String>(), any::<bool>())
            .prop_map(|(error, retryable)| EventKind::Failed { error, retryable }),
        Just(EventKind::Heartbeat),
        any::<String>().prop_map(|reason| EventKind::Abandoned { reason }),
    ]
}

fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    // Years 1970 to about 2500, to the nanosecond.
    (0i64..16_725_225_600, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).expect("in chrono's range"))
}

fn event() -> impl Strategy<Value = Event> {
    (run_id(), any::<u128>(), any::<u32>(), any::<u32>(), timestamp(), any::<String>(), event_kind())
        .prop_map(|(run, id, step, attempt, at, worker, kind)| {
            let mut event = Event::new(run, StepId(step), attempt, worker, kind);
            event.id = EventId::from_uuid(Uuid::from_u128(id));
            event.at = at;
            event
        })
}

/// Text that looks like a message: a JSON object with some of the real field names (and
/// a version that is usually right), holding values of any type.
fn message_like_json() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("v"),
        Just("run_id"),
        Just("step_id"),
        Just("attempt"),
        Just("op"),
        Just("asset"),
        Just("partition"),
        Just("point"),
        Just("config"),
        Just("inputs"),
        Just("timeout_ms"),
        Just("id"),
        Just("at"),
        Just("worker"),
        Just("kind"),
        Just("started"),
        Just("failed"),
    ]
    .prop_map(str::to_owned);
    let version = prop_oneof![3 => Just(json!(SCHEMA_VERSION)), 1 => json_value()];
    (version, proptest::collection::btree_map(field, json_value(), 0..12)).prop_map(|(v, fields)| {
        let mut object: Map<String, Value> = fields.into_iter().collect();
        object.insert("v".into(), v);
        serde_json::to_vec(&Value::Object(object)).expect("a Value serializes")
    })
}

/// Decoding must answer with a value or an error; a panic fails the test.
fn decode_both(bytes: &[u8]) {
    let _ = StepMessage::decode(bytes);
    let _ = Event::decode(bytes);
}

/// Sets the top-level `"v"` of an encoded message.
fn with_version(encoded: &[u8], v: Value) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(encoded).expect("an encoded message is JSON");
    value["v"] = v;
    serde_json::to_vec(&value).expect("a Value serializes")
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_both(&bytes);
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        decode_both(text.as_bytes());
    }

    #[test]
    fn message_like_json_never_panics(bytes in message_like_json()) {
        decode_both(&bytes);
    }

    #[test]
    fn truncated_or_corrupted_messages_never_panic(
        message in step_message(),
        event in event(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        for encoded in [message.encode(), event.encode()] {
            decode_both(&encoded[..cut.index(encoded.len() + 1)]);
            let mut corrupted = encoded.clone();
            corrupted[flip.index(encoded.len())] = byte;
            decode_both(&corrupted);
        }
    }

    #[test]
    fn step_messages_round_trip(message in step_message()) {
        prop_assert_eq!(StepMessage::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn events_round_trip(event in event()) {
        prop_assert_eq!(Event::decode(&event.encode()).unwrap(), event);
    }

    #[test]
    fn another_version_is_refused_by_version(
        message in step_message(),
        event in event(),
        v in any::<u32>().prop_filter("another version", |v| *v != SCHEMA_VERSION),
    ) {
        for encoded in [message.encode(), event.encode()] {
            let other = with_version(&encoded, json!(v));
            for err in [StepMessage::decode(&other).unwrap_err(), Event::decode(&other).unwrap_err()] {
                let is_unsupported =
                    matches!(err, DecodeError::UnsupportedVersion { found, supported } if found == v && supported == SCHEMA_VERSION);
                prop_assert!(is_unsupported, "{}", err);
                prop_assert!(err.to_string().contains(&v.to_string()), "{}", err);
            }
        }
    }

    #[test]
    fn a_version_that_is_not_a_u32_is_not_versioned(
        message in step_message(),
        v in prop_oneof![
            Just(json!(null)),
            Just(json!(-1)),
            Just(json!(1.5)),
            Just(json!("1")),
            (u64::from(u32::MAX) + 1..).prop_map(Value::from),
        ],
    ) {
        let other = with_version(&message.encode(), v);
        prop_assert!(matches!(StepMessage::decode(&other), Err(DecodeError::NotVersioned(_))));
    }
}
