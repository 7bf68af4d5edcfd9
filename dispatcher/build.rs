//! Rebuilds the dispatcher when a migration is added or changed: `sqlx::migrate!` embeds
//! `migrations/` at compile time, and Cargo does not look at that directory by itself, so
//! a new migration alone would leave a (cached) build without it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
