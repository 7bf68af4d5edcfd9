//! The JSON Schemas in `protocol/schemas/` (docs/protocol.md) are the wire types' own:
//! generated from them and compared here, so neither can change without the other.
//! `OPFLOW_WRITE_SCHEMAS=1 cargo test -p opflow-protocol --test schemas` writes them anew.

use std::path::{Path, PathBuf};

use opflow_protocol::{CancelRecord, Event, OpDescription, StepMessage};
use serde_json::Value;

/// Each committed schema: its file and the schema its type generates.
fn generated() -> Vec<(&'static str, Value)> {
    let value = |schema: schemars::Schema| serde_json::to_value(schema).expect("a schema is JSON");
    vec![
        ("step-message.schema.json", value(schemars::schema_for!(StepMessage))),
        ("event.schema.json", value(schemars::schema_for!(Event))),
        ("cancel-record.schema.json", value(schemars::schema_for!(CancelRecord))),
        ("op-description.schema.json", value(schemars::schema_for!(OpDescription))),
    ]
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

#[test]
fn the_committed_schemas_are_the_types_own() {
    let write = std::env::var_os("OPFLOW_WRITE_SCHEMAS").is_some();
    for (file, schema) in generated() {
        let text = serde_json::to_string_pretty(&schema).expect("a schema prints") + "\n";
        let path = dir().join(file);
        if write {
            std::fs::create_dir_all(dir()).expect("protocol/schemas/ can be made");
            std::fs::write(&path, text).expect("a schema can be written");
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{} cannot be read ({e}); write it: OPFLOW_WRITE_SCHEMAS=1 cargo test -p opflow-protocol --test schemas", path.display())
        });
        assert!(
            committed == text,
            "{file} is not what the types generate; if the change is meant, write it again: \
             OPFLOW_WRITE_SCHEMAS=1 cargo test -p opflow-protocol --test schemas"
        );
    }
}

/// Every message kind names its required fields as the types do: a worker in another
/// language that sends only what the schema requires is understood.
#[test]
fn what_a_schema_requires_is_enough_to_decode() {
    let step = serde_json::json!({
        "v": 1, "run_id": "01a24868-3231-7157-9dd7-8553a7535c43", "step_id": 0, "attempt": 1,
        "op": "noop@1.0.0", "asset": "a",
    });
    let event = serde_json::json!({
        "v": 1, "id": "01a24868-3231-7157-9dd7-8553a7535c44", "run_id": "01a24868-3231-7157-9dd7-8553a7535c43",
        "step_id": 0, "attempt": 1, "at": "2026-12-05T22:20:31.036799Z", "worker": "noop@1.0.0/h/1",
        "kind": {"check_result": {"name": "rows", "passed": false}},
    });
    let cancel = serde_json::json!({"v": 1, "at": "2026-12-05T22:20:31Z", "kind": {"run": {"run_id": "01a24868-3231-7157-9dd7-8553a7535c43"}}});
    let schemas: std::collections::HashMap<&str, Value> = generated().into_iter().collect();
    for (file, message) in [
        ("step-message.schema.json", &step),
        ("event.schema.json", &event),
        ("cancel-record.schema.json", &cancel),
    ] {
        let required: Vec<&str> = schemas[file]["required"]
            .as_array()
            .expect("a message schema lists what it requires")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let given: Vec<&str> = message.as_object().unwrap().keys().map(String::as_str).collect();
        for field in &required {
            assert!(given.contains(field), "{file} requires `{field}`, which the minimal message lacks");
        }
    }
    serde_json::from_value::<StepMessage>(step)
        .expect("a step message with only what its schema requires decodes");
    serde_json::from_value::<Event>(event).expect("an event with only what its schema requires decodes");
    serde_json::from_value::<CancelRecord>(cancel)
        .expect("a cancel record with only what its schema requires decodes");
}
