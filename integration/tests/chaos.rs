//! The chaos suite: each scenario runs a plan of at least 5,000 `noop` steps (instant ones
//! and ones that sleep 5–50 ms, fanned in at the end) while injecting one fault, then
//! checks the store: the run succeeded, every step has exactly one applied success, none
//! is missing, the fan-in started after all its upstream steps succeeded, and each step's
//! events are in a consistent order (see `opflow_integration::chaos`).
//!
//! Scenarios restart RabbitMQ and PostgreSQL, which every other test shares, so the whole
//! module runs alone, one test at a time: `scripts/test.sh` runs `chaos::` after the rest.
//! Each scenario is bounded in time and faults, and talks only to loopback.

mod chaos {
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use futures_util::StreamExt;
    use lapin::{
        BasicProperties, Connection, ConnectionProperties,
        options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions},
        types::{AMQPValue, FieldTable, ShortString},
    };
    use opflow_integration::chaos::{Scenario, service_command};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn rng() -> StdRng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        eprintln!("chaos: random seed {seed}");
        StdRng::seed_from_u64(seed)
    }

    /// Workers are SIGKILLed at random moments (every 0.2–1 s, up to 40 times), each
    /// replaced by a new one: their steps in hand are redelivered and run again.
    #[tokio::test]
    async fn workers_sigkilled_again_and_again() -> anyhow::Result<()> {
        let mut scenario = Scenario::start("worker-sigkill", 4).await?;
        let mut rng = rng();
        let mut kills = 0;
        let mut next_kill = Instant::now() + Duration::from_millis(500);
        let status = scenario
            .run_to_end(async |s: &mut Scenario| {
                s.dispatcher.check_alive()?;
                if kills < 40 && Instant::now() >= next_kill {
                    let victim = rng.random_range(0..s.workers.len());
                    s.replace_worker(victim)?;
                    kills += 1;
                    next_kill = Instant::now() + Duration::from_millis(rng.random_range(200..1000));
                }
                Ok(())
            })
            .await?;
        scenario.verify(&status, kills).await?;
        assert!(kills >= 5, "the run ended after only {kills} kills; the scenario did not test much");
        Ok(())
    }

    /// RabbitMQ is stopped for a few seconds mid-run (`rabbitmqctl stop_app`/`start_app`):
    /// the dispatcher and the workers reconnect and the run completes.
    #[tokio::test]
    async fn rabbitmq_restarted_mid_run() -> anyhow::Result<()> {
        let mut scenario = Scenario::start("rabbitmq-restart", 4).await?;
        scenario.wait_progress(0.3).await?;
        let restarted = async {
            service_command("rabbitmqctl", &["-q", "stop_app"]).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            service_command("rabbitmqctl", &["-q", "start_app"]).await?;
            service_command("rabbitmqctl", &["-q", "await_startup"]).await
        }
        .await;
        if restarted.is_err() {
            // Never leave the shared broker stopped.
            let _ = service_command("rabbitmqctl", &["-q", "start_app"]).await;
        }
        restarted?;
        let status = scenario.run_to_end(async |s: &mut Scenario| s.dispatcher.check_alive()).await?;
        scenario.verify(&status, 1).await?;
        for worker in &mut scenario.workers {
            assert!(worker.try_wait()?.is_none(), "a worker exited instead of reconnecting");
        }
        Ok(())
    }

    /// The dispatcher is SIGKILLed twice mid-run and started again: the outbox and the
    /// unacked events carry everything across.
    #[tokio::test]
    async fn dispatcher_sigkilled_and_restarted() -> anyhow::Result<()> {
        let mut scenario = Scenario::start("dispatcher-sigkill", 4).await?;
        for fraction in [0.2, 0.6] {
            scenario.wait_progress(fraction).await?;
            scenario.dispatcher.kill()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            scenario.dispatcher = scenario.env.spawn_dispatcher()?;
        }
        let status = scenario.run_to_end(async |s: &mut Scenario| s.dispatcher.check_alive()).await?;
        scenario.verify(&status, 2).await.map(|_| ())
    }

    /// PostgreSQL is restarted mid-run: the dispatcher loses its lease and its pool's
    /// connections, waits the outage out, takes the lease again and goes on.
    #[tokio::test]
    async fn postgresql_restarted_mid_run() -> anyhow::Result<()> {
        let mut scenario = Scenario::start("postgres-restart", 4).await?;
        scenario.wait_progress(0.3).await?;
        restart_postgres().await?;
        let status = scenario.run_to_end(async |s: &mut Scenario| s.dispatcher.check_alive()).await?;
        scenario.verify(&status, 1).await?;
        Ok(())
    }

    async fn restart_postgres() -> anyhow::Result<()> {
        let clusters = tokio::process::Command::new("pg_lsclusters")
            .arg("-h")
            .output()
            .await
            .context("pg_lsclusters: the PostgreSQL restart scenario needs Debian's postgresql-common")?;
        let text = String::from_utf8_lossy(&clusters.stdout);
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("5432"))
            .context("no PostgreSQL cluster on port 5432 in pg_lsclusters")?;
        let mut fields = line.split_whitespace();
        let (version, cluster) = (fields.next().context("version")?, fields.next().context("cluster")?);
        service_command("pg_ctlcluster", &[version, cluster, "restart"]).await
    }

    /// Copies of real events are published again on the events exchange, shuffled, some
    /// with their own id (a duplicate) and some with a fresh id (as if a second worker had
    /// reported the same thing), late and out of order.
    #[tokio::test]
    async fn duplicate_and_out_of_order_events() -> anyhow::Result<()> {
        let mut scenario = Scenario::start("duplicate-events", 4).await?;
        let connection = Connection::connect(&scenario.env.amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let tap = "chaos.tap";
        channel
            .queue_declare(
                tap.into(),
                QueueDeclareOptions { exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                tap.into(),
                "opflow.events".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut tapped = channel
            .basic_consume(
                tap.into(),
                "chaos".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let mut rng = rng();
        let mut held: Vec<(String, serde_json::Value)> = Vec::new();
        let mut injected = 0usize;
        let mut last_burst = Instant::now();
        let status = scenario
            .run_to_end(async |s: &mut Scenario| {
                s.dispatcher.check_alive()?;
                // Gather what workers reported since the last call, skipping our own copies.
                while let Ok(Some(Ok(delivery))) =
                    tokio::time::timeout(Duration::from_millis(1), tapped.next()).await
                {
                    let ours = delivery
                        .properties
                        .headers()
                        .as_ref()
                        .is_some_and(|h| h.inner().contains_key(&ShortString::from("x-chaos")));
                    if !ours && let Ok(event) = serde_json::from_slice(&delivery.data) {
                        held.push((delivery.routing_key.to_string(), event));
                    }
                }
                if last_burst.elapsed() < Duration::from_millis(300) || held.is_empty() {
                    return Ok(());
                }
                last_burst = Instant::now();
                // Republish a shuffled sample of what was held back: late, out of order.
                let mut burst: Vec<_> = (0..held.len().min(200))
                    .map(|_| held.swap_remove(rng.random_range(0..held.len())))
                    .collect();
                for (routing_key, event) in &mut burst {
                    if rng.random_bool(0.5) {
                        event["id"] = serde_json::Value::String(uuid::Uuid::now_v7().to_string());
                    }
                    let mut headers = FieldTable::default();
                    headers.insert("x-chaos".into(), AMQPValue::Boolean(true));
                    channel
                        .basic_publish(
                            "opflow.events".into(),
                            routing_key.as_str().into(),
                            BasicPublishOptions::default(),
                            &serde_json::to_vec(event)?,
                            BasicProperties::default().with_headers(headers).with_delivery_mode(2),
                        )
                        .await?
                        .await?;
                    injected += 1;
                }
                Ok(())
            })
            .await?;
        connection.close(200, "done".into()).await.ok();
        scenario.verify(&status, injected).await?;
        assert!(injected > 1000, "only {injected} events were injected; the scenario did not test much");
        Ok(())
    }

    /// Two dispatchers share the database and the broker; only the lease holder publishes
    /// and applies. SIGKILL it mid-run and the standby takes over.
    #[tokio::test]
    async fn standby_dispatcher_takes_over() -> anyhow::Result<()> {
        let mut scenario = Scenario::start("dispatcher-takeover", 4).await?;
        let mut second = scenario.env.spawn_dispatcher()?;
        scenario.wait_progress(0.3).await?;
        let db = scenario.env.db().await?;
        let leader = lease_holder(&db).await?.context("nobody holds the dispatcher lease")?;
        let (first_pid, second_pid) = (scenario.dispatcher.pid(), second.pid());
        assert!(
            Some(leader) == first_pid || Some(leader) == second_pid,
            "lease held by {leader}, not a dispatcher"
        );
        if Some(leader) == first_pid {
            scenario.dispatcher.kill()?;
            std::mem::swap(&mut scenario.dispatcher, &mut second);
        } else {
            second.kill()?;
        }
        let status = scenario.run_to_end(async |s: &mut Scenario| s.dispatcher.check_alive()).await?;
        let new_leader = lease_holder(&db).await?;
        assert_eq!(new_leader, scenario.dispatcher.pid(), "the survivor should hold the lease");
        scenario.verify(&status, 1).await?;
        Ok(())
    }

    /// The pid of the dispatcher holding the lease, from its lease connection's name.
    async fn lease_holder(db: &sqlx::PgPool) -> anyhow::Result<Option<u32>> {
        let name: Option<String> = sqlx::query_scalar(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_optional(db)
        .await?;
        Ok(name.and_then(|n| n.strip_prefix("opflow-lease-").and_then(|pid| pid.parse().ok())))
    }
}
