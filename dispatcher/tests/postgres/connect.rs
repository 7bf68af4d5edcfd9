//! Connecting: a database that does not exist yet is created, once, however many
//! processes connect to it at the same moment.

use opflow_dispatcher::store::Store;
use opflow_process::SecretUrl;
use tokio_util::sync::CancellationToken;

use crate::common::{DropDatabase, database_name, server};

#[tokio::test]
async fn processes_using_a_fresh_database_at_once_all_get_it() {
    let name = database_name("race");
    let _cleanup = DropDatabase(name.clone());
    let url = SecretUrl::new(format!("{}/{name}", server()));
    let connects = (0..6).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::connect(&url, &CancellationToken::new()).await.map(|_| ()) })
    });
    for result in futures_util::future::join_all(connects).await {
        result.unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
}
