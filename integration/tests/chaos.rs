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
    use opflow_integration::{
        chaos::{Scenario, service_command},
        lease_holder,
    };
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn rng() -> StdRng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        eprintln!("chaos: random seed {seed}");
        StdRng::seed_from_u64(seed)
    }

    /// SIGKILLs a random worker at random moments (every 0.2–1 s, up to 40 times) and
    /// starts a new one in its place: the steps it had in hand are redelivered.
    struct WorkerKiller {
        rng: StdRng,
        kills: usize,
        next_kill: Instant,
    }

    impl WorkerKiller {
        fn new() -> Self {
            Self { rng: rng(), kills: 0, next_kill: Instant::now() + Duration::from_millis(500) }
        }

        /// Called between checks of the run: kills a worker when its moment has come.
        fn now_and_then(&mut self, s: &mut Scenario) -> anyhow::Result<()> {
            s.dispatcher.check_alive()?;
            if self.kills < 40 && Instant::now() >= self.next_kill {
                let victim = self.rng.random_range(0..s.workers.len());
                s.replace_worker(victim)?;
                self.kills += 1;
                self.next_kill = Instant::now() + Duration::from_millis(self.rng.random_range(200..1000));
            }
            Ok(())
        }
    }

    /// Workers are SIGKILLed at random moments (every 0.2–1 s, up to 40 times), each
    /// replaced by a new one: their steps in hand are redelivered and run again.
    #[tokio::test]
    async fn workers_sigkilled_again_and_again() -> anyhow::Result<()> {
        workers_of_op_sigkilled("worker-sigkill", "noop").await
    }

    /// 4 workers of the noop op `op`, SIGKILLed at random moments until the run ends.
    async fn workers_of_op_sigkilled(name: &'static str, op: &'static str) -> anyhow::Result<()> {
        let mut scenario = Scenario::start_with(name, 4, op).await?;
        let mut killer = WorkerKiller::new();
        let status = scenario.run_to_end(async |s: &mut Scenario| killer.now_and_then(s)).await?;
        let kills = killer.kills;
        scenario.verify(&status, kills).await?;
        assert!(kills >= 5, "the run ended after only {kills} kills; the scenario did not test much");
        Ok(())
    }

    /// The same with workers of the Python SDK (`noop-py`, sdk/python): a worker killed in
    /// the middle of a step leaves its message unacked, the broker redelivers it, and its
    /// result is applied once.
    #[tokio::test]
    async fn python_workers_sigkilled_again_and_again() -> anyhow::Result<()> {
        workers_of_op_sigkilled("python-worker-sigkill", "noop-py").await
    }

    /// Two runs of the same plan at once while workers are SIGKILLed (as above): each step
    /// runs in one of them, and the other waits for it and reuses what it made (docs/
    /// catalog.md). Nothing is lost, nothing applied twice, and no step runs for both runs.
    #[tokio::test]
    async fn identical_runs_share_their_steps_while_workers_are_sigkilled() -> anyhow::Result<()> {
        let mut scenario = Scenario::start("shared-steps-sigkill", 4).await?;
        let plan = scenario.env.plan_file(
            "chaos",
            &opflow_integration::chaos::plan_yaml(opflow_integration::chaos::scenario_steps(), "noop"),
        )?;
        let second = opflow_integration::parse_summary(
            &scenario.env.opflow_ok(&["run", plan.to_str().context("utf-8 path")?, "--json"]).await?,
        )?;
        let second = second["run_id"].as_str().context("run_id")?.to_owned();
        let mut killer = WorkerKiller::new();
        let status = scenario.run_to_end(async |s: &mut Scenario| killer.now_and_then(s)).await?;
        let kills = killer.kills;
        scenario.verify(&status, kills).await?;
        let db = scenario.env.db().await?;
        opflow_integration::wait_for("the second run to end", Duration::from_secs(120), || async {
            let status: String = sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
                .bind(&second)
                .fetch_one(&db)
                .await?;
            Ok((status != "queued" && status != "running").then_some(status))
        })
        .await
        .and_then(|status| {
            anyhow::ensure!(status == "succeeded", "the second run ended {status}");
            Ok(())
        })?;
        opflow_integration::chaos::check_store(&db, &second).await.context("the second run")?;
        // Each step ran for one of the two runs only: one applied worker success per step
        // over both, the rest reused.
        let (by_workers, reused): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE worker <> 'dispatcher (reused)'),
                    count(*) FILTER (WHERE worker = 'dispatcher (reused)')
             FROM events WHERE kind = 'succeeded' AND applied AND run_id IN ($1::uuid, $2::uuid)",
        )
        .bind(&scenario.run_id)
        .bind(&second)
        .fetch_one(&db)
        .await?;
        assert_eq!(
            (by_workers, reused),
            (scenario.steps_total, scenario.steps_total),
            "every step ran once over both runs; {kills} workers killed"
        );
        Ok(())
    }

    /// RabbitMQ is stopped for a few seconds mid-run (`rabbitmqctl stop_app`/`start_app`):
    /// the dispatcher and the workers reconnect and the run completes.
    #[tokio::test]
    async fn rabbitmq_restarted_mid_run() -> anyhow::Result<()> {
        let mut scenario = Scenario::start("rabbitmq-restart", 4).await?;
        scenario.wait_progress(0.3).await?;
        assert_eq!(scenario.readyz().await, Some(200), "the dispatcher is ready before the outage");
        let mut not_ready_seen = false;
        let restarted = async {
            service_command("rabbitmqctl", &["-q", "stop_app"]).await?;
            // At least 3 s down, and until /readyz says the broker is gone (at most 15 s).
            let down = Instant::now();
            while down.elapsed() < Duration::from_secs(3)
                || (!not_ready_seen && down.elapsed() < Duration::from_secs(15))
            {
                not_ready_seen |= scenario.readyz().await == Some(503);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            service_command("rabbitmqctl", &["-q", "start_app"]).await?;
            service_command("rabbitmqctl", &["-q", "await_startup"]).await
        }
        .await;
        if restarted.is_err() {
            // Never leave the shared broker stopped.
            let _ = service_command("rabbitmqctl", &["-q", "start_app"]).await;
        }
        restarted?;
        assert!(not_ready_seen, "/readyz never reported the broker outage");
        opflow_integration::wait_for("/readyz to recover", Duration::from_secs(60), || async {
            Ok((scenario.readyz().await == Some(200)).then_some(()))
        })
        .await?;
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
            scenario.dispatcher = scenario.env.spawn_dispatcher().await?;
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
        // The second dispatcher's API on a port of its own choosing.
        let first_api = std::mem::replace(&mut scenario.env.api_addr, "127.0.0.1:0".into());
        let mut second = scenario.env.spawn_dispatcher().await?;
        scenario.env.api_addr = first_api;
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

    /// The broker's node-wide `consumer_timeout` (and its channel tick, which checks it
    /// once a minute by default), lowered for one test and restored when dropped.
    struct LoweredConsumerTimeout {
        restore: Vec<String>,
    }

    impl LoweredConsumerTimeout {
        async fn set(timeout_ms: u64, tick_ms: u64) -> anyhow::Result<Self> {
            let mut restore = Vec::new();
            for (key, value) in [("consumer_timeout", timeout_ms), ("channel_tick_interval", tick_ms)] {
                let output = tokio::process::Command::new("rabbitmqctl")
                    .args(["-q", "eval", &format!("application:get_env(rabbit, {key}).")])
                    .output()
                    .await?;
                let was = String::from_utf8_lossy(&output.stdout).trim().to_owned();
                restore.push(match was.strip_prefix("{ok,").and_then(|v| v.strip_suffix('}')) {
                    Some(old) => format!("application:set_env(rabbit, {key}, {old})."),
                    None => format!("application:unset_env(rabbit, {key})."),
                });
                service_command(
                    "rabbitmqctl",
                    &["-q", "eval", &format!("application:set_env(rabbit, {key}, {value}).")],
                )
                .await?;
            }
            Ok(Self { restore })
        }
    }

    impl Drop for LoweredConsumerTimeout {
        fn drop(&mut self) {
            for command in &self.restore {
                let restored =
                    std::process::Command::new("rabbitmqctl").args(["-q", "eval", command]).status();
                if !matches!(restored, Ok(status) if status.success()) {
                    eprintln!("could not restore the broker setting; run: rabbitmqctl eval '{command}'");
                }
            }
        }
    }

    /// A step longer than the broker's consumer timeout: the broker closes the worker's
    /// channel and requeues the step; the worker notices, stops the step and reports it
    /// abandoned; after the delivery limit the step fails saying why. It never succeeds, so
    /// it never counts twice; the other steps are unaffected.
    #[tokio::test]
    async fn a_step_longer_than_the_consumer_timeout_is_never_run_twice() -> anyhow::Result<()> {
        let _lowered = LoweredConsumerTimeout::set(5_000, 1_000).await?;
        let mut env = opflow_integration::Env::new("long-step").await?;
        let noop = opflow_integration::binary("noop")?;
        let added =
            env.opflow_ok(&["ops", "add", noop.to_str().context("utf-8")?, "--delivery-limit", "2"]).await?;
        let warned = opflow_integration::stderr(&added);
        assert!(
            warned.contains("noop@1.1.0 declares steps of up to 1m")
                && warned.contains("consumer_timeout is 5s"),
            "ops add should warn that noop's longest step outlives the broker's timeout: {warned}"
        );
        let _dispatcher = env.spawn_dispatcher().await?;
        let _workers = [env.spawn_worker("noop")?, env.spawn_worker("noop")?];
        let plan = env.plan_file(
            "long",
            "name: long\nassets:\n  - name: long\n    op: noop@^1\n    config: {sleep_ms: 30000}\n\
             \x20 - name: short\n    op: noop@^1\n    sweep: {i: {from: 1, to: 20}}\n",
        )?;
        let output = env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?;
        let run_id =
            opflow_integration::parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
        let db = env.db().await?;
        let status: String =
            opflow_integration::wait_for("the run to end", Duration::from_secs(300), || async {
                let status: String = sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
                    .bind(&run_id)
                    .fetch_one(&db)
                    .await?;
                Ok(matches!(status.as_str(), "succeeded" | "failed" | "cancelled").then_some(status))
            })
            .await?;
        assert_eq!(status, "failed", "the long step cannot finish within the timeout");
        // The last abandoned report may still be on its way when the run ends.
        let (error, succeeded, abandoned) = opflow_integration::wait_for("3 abandoned reports", Duration::from_secs(60), || async {
            let row: (String, i64, i64) = sqlx::query_as(
            "SELECT s.error,
                    (SELECT count(*) FROM events e WHERE e.run_id = s.run_id AND e.step_id = s.id AND e.kind = 'succeeded'),
                    (SELECT count(*) FROM events e WHERE e.run_id = s.run_id AND e.step_id = s.id AND e.kind = 'abandoned')
             FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE s.run_id = $1::uuid AND a.name = 'long'",
        )
            .bind(&run_id)
            .fetch_one(&db)
            .await?;
            Ok((row.2 >= 3).then_some(row))
        })
        .await?;
        assert_eq!(succeeded, 0, "the long step reported a result after the broker took it away");
        assert_eq!(abandoned, 3, "a delivery limit of 2 allows 3 deliveries, each reported abandoned");
        assert!(
            error.contains("delivered 3 times")
                && error.contains("consumer_timeout")
                && error.contains("reliability.md"),
            "{error}"
        );
        let short_ok: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE s.run_id = $1::uuid AND a.name = 'short' AND s.status = 'succeeded'",
        )
        .bind(&run_id)
        .fetch_one(&db)
        .await?;
        assert_eq!(short_ok, 20, "the other steps are unaffected");
        eprintln!("long step: {error}");
        Ok(())
    }

    /// Steps of any length: with the broker's consumer timeout at 30 s, a step of 90 s
    /// succeeds exactly once, its worker having handed its custody to the run store (and
    /// acked its message) before the timeout. A worker SIGKILLed after its handover loses
    /// nothing: its step is found silent, retried on another worker, and the run succeeds;
    /// no result is applied twice, and nothing is abandoned.
    #[tokio::test]
    async fn a_step_three_times_the_consumer_timeout_succeeds_once_and_survives_its_worker()
    -> anyhow::Result<()> {
        let _lowered = LoweredConsumerTimeout::set(30_000, 1_000).await?;
        let mut env = opflow_integration::Env::new("long-step-handover").await?;
        env.register("noop").await?;
        let _dispatcher = env.spawn_dispatcher_with(&[("OPFLOW_LOST_STEP_AFTER_SECS", "5")]).await?;
        let spawn_worker = |env: &opflow_integration::Env| -> anyhow::Result<tokio::process::Child> {
            Ok(env
                .command(&opflow_integration::binary("noop")?)
                .env("OPFLOW_HANDOVER_AFTER", "10s")
                .stdout(std::process::Stdio::null())
                .spawn()?)
        };
        let mut workers = vec![spawn_worker(&env)?, spawn_worker(&env)?];
        let plan = env.plan_file(
            "long",
            "name: long\nassets:\n  - name: long\n    op: noop@^1\n    config: {sleep_ms: 90000}\n\
             \x20 - name: killed\n    op: noop@^1\n    config: {sleep_ms: 40000}\n",
        )?;
        let output = env.opflow_ok(&["run", plan.to_str().context("utf-8")?, "--json"]).await?;
        let run_id =
            opflow_integration::parse_summary(&output)?["run_id"].as_str().context("run_id")?.to_owned();
        let db = env.db().await?;
        // Both steps running, one per worker; then past the handover (10 s), the worker of
        // `killed` is SIGKILLed and a fresh one takes its place.
        let holder: String = opflow_integration::wait_for("both steps to run", Duration::from_secs(60), || async {
            let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT a.name, s.worker FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
                 WHERE s.run_id = $1::uuid AND s.status = 'running'",
            )
            .bind(&run_id)
            .fetch_all(&db)
            .await?;
            Ok((rows.len() == 2)
                .then(|| rows.into_iter().find(|(name, _)| name == "killed").and_then(|(_, worker)| worker))
                .flatten())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(15)).await;
        let pid: u32 = holder.rsplit('/').next().context("a worker id ends with its pid")?.parse()?;
        let victim = workers.iter_mut().position(|w| w.id() == Some(pid)).context("the holder is ours")?;
        opflow_integration::sigkill(&workers[victim])?;
        workers.push(spawn_worker(&env)?);
        let status: String =
            opflow_integration::wait_for("the run to end", Duration::from_secs(300), || async {
                let status: String = sqlx::query_scalar("SELECT status::text FROM runs WHERE id = $1::uuid")
                    .bind(&run_id)
                    .fetch_one(&db)
                    .await?;
                Ok(matches!(status.as_str(), "succeeded" | "failed" | "canceled").then_some(status))
            })
            .await?;
        assert_eq!(status, "succeeded", "steps longer than the consumer timeout finish");
        let rows: Vec<(String, i32, i64, i64)> = sqlx::query_as(
            "SELECT a.name, s.attempt,
                    (SELECT count(*) FROM events e WHERE e.run_id = s.run_id AND e.step_id = s.id AND e.kind = 'succeeded'),
                    (SELECT count(*) FROM events e WHERE e.run_id = s.run_id AND e.step_id = s.id AND e.kind = 'abandoned')
             FROM steps s JOIN run_assets a ON a.run_id = s.run_id AND a.idx = s.asset
             WHERE s.run_id = $1::uuid ORDER BY a.name",
        )
        .bind(&run_id)
        .fetch_all(&db)
        .await?;
        eprintln!("long steps (name, attempt, successes, abandons): {rows:?}");
        let [killed, long] = &rows[..] else { anyhow::bail!("two steps: {rows:?}") };
        assert_eq!((long.1, long.2, long.3), (1, 1, 0), "the 90 s step ran once, succeeded once: {long:?}");
        assert!(killed.1 >= 2, "the killed worker's step was retried: {killed:?}");
        assert_eq!((killed.2, killed.3), (1, 0), "one success, nothing abandoned: {killed:?}");
        Ok(())
    }
}
