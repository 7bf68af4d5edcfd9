//! The dispatcher's structure, checked from its own source: which module may use which.
//! ARCHITECTURE.md states these rules; this test keeps them true.
//!
//! - **Layers.** The top-level modules form layers, and a module uses only those below it:
//!   nothing lower reaches up (the settings, say, never import what they configure).
//! - **No circles.** No source file uses, directly or through others, a file that uses it.
//! - **Doors.** The CLI's user commands know only the HTTP API; pure modules hold no I/O;
//!   only `store/` writes SQL.
//!
//! Uses are read as text: every `crate::…`, `super::…` and `self::…` path in a file's code
//! (its `use` items, grouped or not, and paths written inline), resolved to the module file
//! it names. Test modules (`#[cfg(test)]`) are left out: they are not the architecture.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The top-level modules, from the top down: each may use only those in later layers.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["bench"],
    &["up"],
    &["service"],
    &["ui"],
    &["api"],
    &["submit", "ops", "webhooks"],
    &["store"],
    &["plan"],
    &["schedules"],
    &["settings", "keyed_counts", "human"],
];

/// The CLI's user commands: clients of the HTTP API, which never open the database or the
/// broker (an administrator's commands may).
const USER_COMMANDS: &[&str] =
    &["cli/client.rs", "cli/run.rs", "cli/watch.rs", "cli/webhooks.rs", "cli/schedules.rs", "cli/runs.rs"];

/// Modules that decide without I/O: no database, broker, HTTP or runtime.
const PURE: &[&str] = &[
    "plan/",
    "schedules/",
    "store/apply/decide.rs",
    "store/apply/columns.rs",
    "up/autoscale/rule.rs",
    "webhooks/sign.rs",
];

/// Outside `store/`, the one file that runs statements: the bench's sandbox creates and
/// drops its own databases.
const SQL_OUTSIDE_STORE: &[&str] = &["bench/sandbox.rs"];

/// A module, as the path of names from the crate root (`["store", "apply"]`).
type Module = Vec<String>;

/// Each module and the modules it uses.
type Uses = BTreeMap<Module, BTreeSet<Module>>;

struct Source {
    /// Path under `src/`, e.g. `store/apply/mod.rs`.
    file: String,
    /// Module path, e.g. `["store", "apply"]`.
    module: Vec<String>,
    /// The code, without test modules and comments.
    code: String,
}

fn sources() -> Vec<Source> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let all: Vec<(String, String)> = files
        .into_iter()
        .filter(|path| path.file_name().is_some_and(|name| name != "main.rs"))
        .map(|path| {
            let file = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            (file, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    // Modules declared `#[cfg(test)] mod x;` live in files of their own: tests, left out.
    let mut test_modules = BTreeSet::new();
    for (file, text) in &all {
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "#[cfg(test)]"
                && let Some(name) =
                    lines.next().and_then(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';'))
            {
                let mut module = module_of(file);
                module.push(name.to_owned());
                test_modules.insert(module);
            }
        }
    }
    all.into_iter()
        .filter(|(file, _)| !test_modules.contains(&module_of(file)))
        .map(|(file, text)| Source { module: module_of(&file), code: code_of(&text), file })
        .collect()
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// `store/apply/mod.rs` → `store::apply`; `lib.rs` → the crate root.
fn module_of(file: &str) -> Vec<String> {
    let stem = file.trim_end_matches(".rs");
    let mut parts: Vec<String> = stem.split('/').map(str::to_owned).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a file without its `#[cfg(test)]` items and its comments.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            // Skip the item that follows: a line, or a block to its matching brace.
            let mut depth = 0i32;
            for item in lines.by_ref() {
                depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
                if depth <= 0 && (item.trim_end().ends_with('}') || item.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        let without_comment = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        code.push_str(without_comment);
        code.push('\n');
    }
    code
}

/// Every module path the code names: `use` trees expanded, inline paths as written.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for prefix in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = code[from..].find(prefix) {
            let start = from + found;
            from = start + prefix.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tree = use_tree(&code[start..]);
            expand(&tree, "", &mut paths);
        }
    }
    paths
}

/// The path starting here, with its `{…}` group if it has one.
fn use_tree(text: &str) -> String {
    let mut depth = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => break,
            _ => {}
        }
        end = i + c.len_utf8();
    }
    text[..end].split_whitespace().collect()
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str, base: &str, out: &mut Vec<String>) {
    match tree.find('{') {
        None => {
            let path = format!("{base}{tree}");
            out.push(path.trim_end_matches("::").to_owned());
        }
        Some(open) => {
            let head = &tree[..open];
            let inner = tree[open + 1..].strip_suffix('}').unwrap_or(&tree[open + 1..]);
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(inner[start..i].trim(), &format!("{base}{head}"), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if !inner[start..].trim().is_empty() {
                expand(inner[start..].trim(), &format!("{base}{head}"), out);
            }
        }
    }
}

/// The module file a path in `from` names: its longest prefix that is a module.
fn resolve(path: &str, from: &[String], modules: &BTreeSet<Vec<String>>) -> Vec<String> {
    let mut segments: Vec<&str> = path.split("::").collect();
    // A file's module is `from`; `super` is the module that declares it.
    let mut base: Vec<String> = match segments.first() {
        Some(&"crate") => Vec::new(),
        Some(&"self") => from.to_vec(),
        Some(&"super") => from.to_vec(),
        _ => return Vec::new(),
    };
    segments.remove(0);
    if path.starts_with("super") {
        base.pop();
        while segments.first() == Some(&"super") {
            segments.remove(0);
            base.pop();
        }
    }
    let mut module = base;
    for segment in segments {
        let mut next = module.clone();
        next.push(segment.to_owned());
        if modules.contains(&next) {
            module = next;
        } else {
            break;
        }
    }
    module
}

/// Each file's module and the modules it uses (not itself).
fn uses() -> (Vec<Source>, Uses) {
    let sources = sources();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let mut edges: Uses = BTreeMap::new();
    for source in &sources {
        let targets = edges.entry(source.module.clone()).or_default();
        for path in paths_in(&source.code) {
            let target = resolve(&path, &source.module, &modules);
            if target != source.module && !target.is_empty() {
                targets.insert(target);
            }
        }
    }
    (sources, edges)
}

fn name(module: &[String]) -> String {
    if module.is_empty() { "crate".to_owned() } else { module.join("::") }
}

fn layer_of(module: &[String]) -> Option<usize> {
    let top = module.first()?;
    LAYERS.iter().position(|layer| layer.contains(&top.as_str()))
}

#[test]
fn every_top_level_module_is_in_a_layer() {
    let (sources, _) = uses();
    for source in sources.iter().filter(|s| s.module.len() == 1) {
        assert!(
            layer_of(&source.module).is_some(),
            "`{}` ({}) is in no layer: add it to LAYERS here and to ARCHITECTURE.md's code map",
            name(&source.module),
            source.file
        );
    }
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let (_, edges) = uses();
    let mut upward = Vec::new();
    for (from, targets) in &edges {
        let (Some(from_layer), false) = (layer_of(from), from.is_empty()) else { continue };
        for to in targets {
            let Some(to_layer) = layer_of(to) else { continue };
            if from[0] != to[0] && to_layer <= from_layer {
                upward.push(format!("{} uses {}", name(from), name(to)));
            }
        }
    }
    assert!(upward.is_empty(), "uses that do not point down the layers ({LAYERS:?}):\n{}", upward.join("\n"));
}

#[test]
fn no_module_uses_one_that_uses_it() {
    let (_, edges) = uses();
    // Tarjan's strongly connected components: any of more than one module is a circle.
    struct Walk<'a> {
        edges: &'a Uses,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        circles: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, module: &'a Vec<String>) {
            let n = self.index.len();
            self.index.insert(module, n);
            self.low.insert(module, n);
            self.stack.push(module);
            self.on_stack.insert(module);
            for next in self.edges.get(module).into_iter().flatten() {
                let Some((next, _)) = self.edges.get_key_value(next) else { continue };
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[module].min(self.low[next]);
                    self.low.insert(module, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[module].min(self.index[next]);
                    self.low.insert(module, low);
                }
            }
            if self.low[module] == self.index[module] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(name(top));
                    if top == module {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.circles.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        circles: Vec::new(),
    };
    for module in edges.keys() {
        if !walk.index.contains_key(module) {
            walk.visit(module);
        }
    }
    assert!(walk.circles.is_empty(), "modules that use each other, in a circle: {:?}", walk.circles);
}

#[test]
fn the_user_commands_know_only_the_http_api() {
    let (sources, edges) = uses();
    for source in sources.iter().filter(|s| USER_COMMANDS.contains(&s.file.as_str())) {
        for to in &edges[&source.module] {
            assert!(
                to.first().is_some_and(|top| top == "cli"),
                "{} uses {}: a user command talks to the dispatcher only over its HTTP API \
                 (the contract is opflow_api_model)",
                source.file,
                name(to)
            );
        }
        for word in ["sqlx", "lapin", "opflow_amqp"] {
            assert!(!source.code.contains(word), "{} names {word}", source.file);
        }
    }
}

#[test]
fn pure_modules_hold_no_io() {
    let (sources, _) = uses();
    let mut checked = 0;
    for source in sources.iter().filter(|s| PURE.iter().any(|p| s.file.starts_with(p))) {
        checked += 1;
        for word in ["sqlx", "lapin", "reqwest", "tokio", "std::fs", "std::net", "std::process"] {
            assert!(!source.code.contains(word), "{} is pure, yet names {word}", source.file);
        }
    }
    assert!(checked >= PURE.len(), "a pure module listed here is missing: {PURE:?}");
}

#[test]
fn only_the_store_writes_sql() {
    let (sources, _) = uses();
    for source in &sources {
        if source.file.starts_with("store/") || SQL_OUTSIDE_STORE.contains(&source.file.as_str()) {
            continue;
        }
        for word in ["sqlx::query", "sqlx::raw_sql", ".execute(", ".fetch_one(", ".fetch_all("] {
            assert!(
                !source.code.contains(word),
                "{} runs a statement ({word}): SQL against opflow's tables belongs in store/",
                source.file
            );
        }
    }
}

#[test]
fn only_the_cli_prints_and_through_one_door() {
    // stdout is written in one place, `cli/out.rs`, which ends a command whose reader went
    // away; SIGPIPE stays ignored, so a peer hanging up never kills a process.
    let (sources, _) = uses();
    for source in &sources {
        for word in ["println!", "print!(", "SIGPIPE"] {
            // `eprintln!` and `eprint!` (stderr) are not stdout.
            let on_stdout = source.code.match_indices(word).any(|(at, _)| !source.code[..at].ends_with('e'));
            assert!(
                !on_stdout,
                "{} uses {word}: the CLI prints with say! (cli/out.rs), and SIGPIPE stays ignored",
                source.file
            );
        }
    }
}

#[test]
fn the_reader_sees_what_it_reads() {
    // The reader above is itself checked on a sample: a grouped `use` and an inline path.
    let mut paths =
        paths_in("use crate::{store::{lease::Lease, Store}, plan};\nlet x = super::params::run_id(id);\n");
    paths.sort();
    assert_eq!(
        paths,
        ["crate::plan", "crate::store::Store", "crate::store::lease::Lease", "super::params::run_id"]
    );
    let modules: BTreeSet<Vec<String>> =
        [vec!["api".to_owned()], vec!["api".to_owned(), "params".to_owned()], vec!["store".to_owned()]]
            .into_iter()
            .collect();
    let from = vec!["api".to_owned(), "runs".to_owned()];
    assert_eq!(resolve("super::params::run_id", &from, &modules), ["api", "params"]);
    assert_eq!(resolve("crate::store::Store", &from, &modules), ["store"]);
    assert!(code_of("fn a() {}\n#[cfg(test)]\nmod tests {\n    use crate::cli;\n}\n").trim() == "fn a() {}");
}
