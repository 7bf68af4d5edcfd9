//! `raw`: the broker's own limit on this machine, measured with lapin alone (no database,
//! no opflow code). Every other figure of `opflow bench` is reported as a ratio to these.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use opflow_amqp::QueueKind;
use tokio_util::sync::CancellationToken;

/// About the size of a step message or an event.
const PAYLOAD_BYTES: usize = 240;
/// Publishes in flight before their confirms are awaited.
const CONFIRM_WINDOW: usize = 500;

/// What `raw` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RawFigures {
    pub queue_type: &'static str,
    pub messages: usize,
    /// Persistent publishes per second, with confirms, in windows of [`CONFIRM_WINDOW`].
    pub publish_per_s: f64,
    /// Deliveries per second to two consumers on separate connections, prefetch 1, ack-late.
    pub consume_per_s: f64,
    pub cycle_messages: usize,
    /// A worker's cycle, without a database: deliveries per second (over both) to two
    /// consumers on separate connections, prefetch 1, each publishing a result with a
    /// confirm for every delivery and acking only once it is confirmed. Under prefetch 1
    /// and ack-late this is the broker's own limit for two workers.
    pub cycle_per_s: f64,
    /// CPU per delivery of the cycle: `consumers` is this process (both consumers, lapin
    /// alone, doing a worker's broker work and nothing else), `broker` the RabbitMQ node.
    /// What a worker's own CPU per step is compared with.
    pub cycle_cpu_us_per_message: CycleCpu,
    /// The whole loop of one step, broker operations only: one publisher with confirms
    /// (windows of [`CONFIRM_WINDOW`]) → two consumers as in the cycle (prefetch 1, each
    /// publishes a confirmed result, then acks) → one collector consuming the results, all
    /// at once. Steps per second from the first publish to the last result collected: the
    /// four broker operations each step of this design costs, with nothing else in them.
    pub pipeline_per_s: f64,
    pub chain_steps: usize,
    /// One hop there and back: consume a step, publish its completion with a confirm, ack;
    /// consume the completion, publish the next step with a confirm, ack.
    pub chain_ms_per_step: f64,
}

/// CPU per message of the cycle, from the processes' own counters; `None` if unreadable.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CycleCpu {
    pub consumers: Option<f64>,
    pub broker: Option<f64>,
}

/// Runs the four measurements on queues named `opflow.bench.raw.*`, deleted afterwards.
pub async fn measure(
    amqp_url: &str,
    kind: QueueKind,
    messages: usize,
    cycle_messages: usize,
    chain_steps: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<RawFigures> {
    let connection = connect(amqp_url, "opflow-bench-raw").await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let queue = "opflow.bench.raw";
    let (step_queue, done_queue) = ("opflow.bench.raw.step", "opflow.bench.raw.done");
    let results_queue = "opflow.bench.raw.results";
    let (pipeline_queue, collected_queue) = ("opflow.bench.raw.pipeline", "opflow.bench.raw.collected");
    let queues = [queue, step_queue, done_queue, results_queue, pipeline_queue, collected_queue];
    for name in queues {
        declare(&channel, name, kind).await?;
    }

    let payload = vec![b'x'; PAYLOAD_BYTES];
    let started = Instant::now();
    publish_in_windows(&channel, queue, &payload, messages, cancel).await?;
    let publish_per_s = messages as f64 / started.elapsed().as_secs_f64();

    let consume_per_s = consume_with_two(amqp_url, queue, messages, None, cancel).await?;
    // The queue is empty again: fill it for the cycle (untimed).
    publish_in_windows(&channel, queue, &payload, cycle_messages, cancel).await?;
    let (me, broker) = (vec![std::process::id()], super::cpu::rabbitmq_node_pids());
    let before = (super::cpu::micros(&me), super::cpu::micros(&broker));
    let cycle_per_s = consume_with_two(amqp_url, queue, cycle_messages, Some(results_queue), cancel).await?;
    let after = (super::cpu::micros(&me), super::cpu::micros(&broker));
    let per_message = |from: Option<u64>, to: Option<u64>| {
        Some((to?.saturating_sub(from?)) as f64 / cycle_messages.max(1) as f64)
    };
    let cycle_cpu_us_per_message =
        CycleCpu { consumers: per_message(before.0, after.0), broker: per_message(before.1, after.1) };
    let pipeline_per_s = pipeline(amqp_url, pipeline_queue, collected_queue, cycle_messages, cancel).await?;
    let chain_ms_per_step = chain(amqp_url, step_queue, done_queue, chain_steps, &payload, cancel).await?;

    for name in queues {
        channel.queue_delete(name.into(), QueueDeleteOptions::default()).await?;
    }
    close(connection.close(200, "bench done".into()).await);
    Ok(RawFigures {
        queue_type: kind.as_str(),
        messages,
        publish_per_s,
        consume_per_s,
        cycle_messages,
        cycle_per_s,
        cycle_cpu_us_per_message,
        pipeline_per_s,
        chain_steps,
        chain_ms_per_step,
    })
}

/// Publishes `count` persistent messages to `queue`, awaiting the confirms of each window
/// of [`CONFIRM_WINDOW`] before the next.
async fn publish_in_windows(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    count: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    for window in 0..count.div_ceil(CONFIRM_WINDOW) {
        let in_window = CONFIRM_WINDOW.min(count - window * CONFIRM_WINDOW);
        let mut confirms = Vec::with_capacity(in_window);
        for _ in 0..in_window {
            confirms.push(publish(channel, queue, payload).await?);
        }
        for confirm in confirms {
            confirm.await?;
        }
        if cancel.is_cancelled() {
            anyhow::bail!("cancelled");
        }
    }
    Ok(())
}

async fn connect(amqp_url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(amqp_url, properties).await.context("connecting to RabbitMQ for the raw benchmark")
}

async fn confirming_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

async fn declare(channel: &Channel, name: &str, kind: QueueKind) -> anyhow::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-queue-type"), AMQPValue::LongString(kind.as_str().into()));
    channel
        .queue_declare(name.into(), QueueDeclareOptions { durable: true, ..Default::default() }, arguments)
        .await
        .with_context(|| format!("declaring {name}"))?;
    Ok(())
}

async fn publish(channel: &Channel, queue: &str, payload: &[u8]) -> anyhow::Result<lapin::PublisherConfirm> {
    Ok(channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?)
}

async fn consumer(connection: &Connection, queue: &str, tag: &str) -> anyhow::Result<(Channel, Consumer)> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    Ok((channel, consumer))
}

/// Two consumers, each on its own connection, prefetch 1, acking each delivery; with
/// `results`, each first publishes a result there (on a confirming channel of its own
/// connection) and acks once the broker confirmed it, as a worker does. Deliveries per
/// second over both.
async fn consume_with_two(
    amqp_url: &str,
    queue: &str,
    messages: usize,
    results: Option<&'static str>,
    cancel: &CancellationToken,
) -> anyhow::Result<f64> {
    let consumed = Arc::new(AtomicUsize::new(0));
    let done = CancellationToken::new();
    let started = Instant::now();
    let tasks = spawn_workers(amqp_url, queue, results, Some((consumed, messages)), &done, cancel).await?;
    tokio::select! {
        () = done.cancelled() => {}
        () = cancel.cancelled() => anyhow::bail!("cancelled"),
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    Ok(messages as f64 / elapsed.as_secs_f64())
}

/// Starts two "workers", each on its own connection: prefetch 1; with `results`, each
/// publishes a result there with a confirm before it acks. With `count`, they cancel
/// `done` once they consumed that many between them; else they run until `done`.
async fn spawn_workers(
    amqp_url: &str,
    queue: &str,
    results: Option<&'static str>,
    count: Option<(Arc<AtomicUsize>, usize)>,
    done: &CancellationToken,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let mut tasks = Vec::new();
    for n in 0..2 {
        let connection = connect(amqp_url, &format!("opflow-bench-raw-consumer-{n}")).await?;
        let (channel, mut consumer) = consumer(&connection, queue, &format!("raw-{n}")).await?;
        let out = match results {
            Some(_) => Some(confirming_channel(&connection).await?),
            None => None,
        };
        let (count, done, cancel) = (count.clone(), done.clone(), cancel.clone());
        let result = vec![b'r'; PAYLOAD_BYTES];
        tasks.push(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = consumer.next() => next,
                    () = done.cancelled() => break,
                    () = cancel.cancelled() => break,
                };
                let Some(delivery) = next else { break };
                let delivery = delivery?;
                if let (Some(out), Some(results)) = (&out, results) {
                    publish(out, results, &result).await?.await?;
                }
                delivery.ack(BasicAckOptions::default()).await?;
                if let Some((consumed, messages)) = &count
                    && consumed.fetch_add(1, Ordering::Relaxed) + 1 >= *messages
                {
                    done.cancel();
                }
            }
            close(channel.close(200, "bench done".into()).await);
            if let Some(out) = out {
                close(out.close(200, "bench done".into()).await);
            }
            close(connection.close(200, "bench done".into()).await);
            anyhow::Ok(())
        }));
    }
    Ok(tasks)
}

/// The pipeline (see [`RawFigures::pipeline_per_s`]): `messages` published to `queue`
/// while two workers turn each into a result on `collected` and one collector consumes
/// those; steps per second until the last result is collected.
async fn pipeline(
    amqp_url: &str,
    queue: &str,
    collected: &'static str,
    messages: usize,
    cancel: &CancellationToken,
) -> anyhow::Result<f64> {
    let done = CancellationToken::new();
    let workers = spawn_workers(amqp_url, queue, Some(collected), None, &done, cancel).await?;
    let collector_connection = connect(amqp_url, "opflow-bench-raw-collector").await?;
    let collector = collector_connection.create_channel().await?;
    // As the dispatcher reads events: many unacked at once, acked in batches.
    collector.basic_qos(CONFIRM_WINDOW as u16, BasicQosOptions::default()).await?;
    let mut results = collector
        .basic_consume(
            collected.into(),
            "raw-collector".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher_connection = connect(amqp_url, "opflow-bench-raw-publisher").await?;
    let publisher = confirming_channel(&publisher_connection).await?;
    let payload = vec![b'x'; PAYLOAD_BYTES];

    let started = Instant::now();
    let publishing = publish_in_windows(&publisher, queue, &payload, messages, cancel);
    let collecting = async {
        let mut collected = 0;
        while collected < messages {
            let next = tokio::select! {
                next = tokio::time::timeout(Duration::from_secs(30), results.next()) => next,
                () = cancel.cancelled() => anyhow::bail!("cancelled"),
            };
            let delivery = next.context("no result within 30 s")?.context("the collector ended")??;
            collected += 1;
            if collected % 100 == 0 || collected == messages {
                delivery.ack(BasicAckOptions { multiple: true }).await?;
            }
        }
        anyhow::Ok(())
    };
    tokio::try_join!(publishing, collecting)?;
    let elapsed = started.elapsed();
    done.cancel();
    for worker in workers {
        worker.await??;
    }
    close(publisher.close(200, "bench done".into()).await);
    close(collector.close(200, "bench done".into()).await);
    close(publisher_connection.close(200, "bench done".into()).await);
    close(collector_connection.close(200, "bench done".into()).await);
    Ok(messages as f64 / elapsed.as_secs_f64())
}

/// A chain of `steps` two-hop round trips between a "worker" and a "dispatcher".
async fn chain(
    amqp_url: &str,
    step_queue: &'static str,
    done_queue: &'static str,
    steps: usize,
    payload: &[u8],
    cancel: &CancellationToken,
) -> anyhow::Result<f64> {
    let worker_connection = connect(amqp_url, "opflow-bench-raw-worker").await?;
    let dispatcher_connection = connect(amqp_url, "opflow-bench-raw-dispatcher").await?;
    let worker_out = confirming_channel(&worker_connection).await?;
    let dispatcher_out = confirming_channel(&dispatcher_connection).await?;
    let (worker_in, mut steps_in) = consumer(&worker_connection, step_queue, "raw-worker").await?;
    let (dispatcher_in, mut done_in) = consumer(&dispatcher_connection, done_queue, "raw-dispatcher").await?;

    let worker_payload = payload.to_vec();
    let stop = CancellationToken::new();
    let worker_stop = stop.clone();
    let worker = tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = steps_in.next() => next,
                () = worker_stop.cancelled() => break,
            };
            let Some(delivery) = next else { break };
            let delivery = delivery?;
            publish(&worker_out, done_queue, &worker_payload).await?.await?;
            delivery.ack(BasicAckOptions::default()).await?;
        }
        close(worker_out.close(200, "bench done".into()).await);
        anyhow::Ok(())
    });

    let started = Instant::now();
    publish(&dispatcher_out, step_queue, payload).await?.await?;
    let mut completed = 0;
    while completed < steps {
        let next = tokio::select! {
            next = tokio::time::timeout(Duration::from_secs(30), done_in.next()) => next,
            () = cancel.cancelled() => anyhow::bail!("cancelled"),
        };
        let delivery =
            next.context("no completion within 30 s")?.context("the completion consumer ended")??;
        completed += 1;
        if completed < steps {
            publish(&dispatcher_out, step_queue, payload).await?.await?;
        }
        delivery.ack(BasicAckOptions::default()).await?;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    worker.await??;
    // Channels first, then connections: closing a connection under open channels makes
    // lapin log an error about channels already closing.
    for channel in [&worker_in, &dispatcher_in, &dispatcher_out] {
        close(channel.close(200, "bench done".into()).await);
    }
    close(worker_connection.close(200, "bench done".into()).await);
    close(dispatcher_connection.close(200, "bench done".into()).await);
    Ok(elapsed.as_secs_f64() * 1000.0 / steps as f64)
}

/// Logs a failed close: the benchmark is over, but a failure is still said.
fn close(result: Result<(), lapin::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "closing a benchmark connection or channel failed");
    }
}
