//! The lease connection's settings.

use opflow_dispatcher::store::lease::connect_options;
use sqlx::{Connection, PgConnection};

use crate::common::TestDb;

#[tokio::test]
async fn the_lease_connection_asks_the_server_to_drop_it_soon_when_cut_off() {
    let db = TestDb::new("lease").await;
    let mut connection = PgConnection::connect_with(&connect_options(&db.store)).await.unwrap();
    for (setting, value) in [
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "20000"),
    ] {
        let shown: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(shown, value, "{setting}");
    }
}
