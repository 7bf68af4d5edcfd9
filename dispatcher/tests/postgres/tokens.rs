//! API tokens: usable until revoked, only their hash kept.

use opflow_dispatcher::store::tokens::Scope;

use crate::common::TestDb;

#[tokio::test]
async fn a_token_works_until_revoked_and_only_its_hash_is_kept() {
    let db = TestDb::new("tokens").await;
    let token = db.store.tokens().create("ci", Scope::Submit, None).await.unwrap().unwrap();
    assert!(token.starts_with("opf_"), "{token}");
    assert!(
        db.store.tokens().create("ci", Scope::Read, Some("risk")).await.unwrap().is_none(),
        "names are unique"
    );
    let caller = db.store.tokens().check(&token).await.unwrap().unwrap();
    assert_eq!((caller.name.as_str(), caller.scope), ("ci", Scope::Submit));
    let (_, secret) = token.strip_prefix("opf_").and_then(|rest| rest.split_once('_')).unwrap();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE secret_hash::text LIKE '%' || $1 || '%'")
            .bind(secret)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(stored, 0, "the secret itself is not stored");
    let wrong = format!("{}x", token);
    assert!(db.store.tokens().check(&wrong).await.unwrap().is_none());
    assert!(db.store.tokens().check("opf_nope").await.unwrap().is_none());
    assert!(db.store.tokens().revoke("ci").await.unwrap());
    assert!(db.store.tokens().check(&token).await.unwrap().is_none());
    assert!(!db.store.tokens().revoke("ci").await.unwrap());
    let listed = db.store.tokens().list().await.unwrap();
    assert!(listed[0].revoked_at.is_some() && listed[0].last_used_at.is_some());
}
