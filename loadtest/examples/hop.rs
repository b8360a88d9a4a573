//! One broker hop, measured: produces a record, waits until a consumer of
//! the same partition reads it back, 200 times, and prints the median and
//! 90th percentile of that hop and of the producer's acknowledgement.
//!
//! ```sh
//! tansu topic create hop --partitions 1 --broker tcp://127.0.0.1:9192
//! cargo run --release -p vigil-loadtest --example hop -- 127.0.0.1:9192 hop
//! ```
//!
//! The settings are the bus defaults (`vigil_schemas::bus`);
//! `VIGIL_FETCH_WAIT_MS` and `VIGIL_PRODUCER_LINGER_MS` change them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use vigil_schemas::bus;

const ROUNDS: usize = 200;

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(brokers), Some(topic)) = (args.next(), args.next()) else {
        bail!("usage: hop BROKERS TOPIC (a topic with a partition 0 that may be written to)");
    };
    let producer: FutureProducer = bus::producer_config(&brokers)
        .create()
        .context("creating the producer")?;
    let consumer: BaseConsumer = bus::consumer_config(&brokers, "vigil-hop-probe")
        .create()
        .context("creating the consumer")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::End)?;
    consumer.assign(&assignment)?;
    let _ = consumer.poll(Duration::from_millis(500));

    let mut hops = Vec::with_capacity(ROUNDS);
    let mut acks = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let payload = format!("hop-{round}");
        let started = Instant::now();
        let record = FutureRecord::<[u8], [u8]>::to(&topic)
            .partition(0)
            .payload(payload.as_bytes());
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .context("queueing a record")?;
        let ack = tokio::spawn(async move {
            let delivered = delivery.await;
            (started.elapsed(), delivered)
        });
        loop {
            if started.elapsed() > Duration::from_secs(10) {
                bail!(
                    "record {round} did not come back within 10 s; is {topic} partition 0 readable?"
                );
            }
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100))
                && message.payload() == Some(payload.as_bytes())
            {
                break;
            }
        }
        hops.push(started.elapsed());
        let (acked, delivered) = ack.await?;
        if let Ok(Err((e, _))) = delivered {
            bail!("record {round} was not acknowledged: {e}");
        }
        acks.push(acked);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    hops.sort();
    acks.sort();
    println!(
        "{ROUNDS} hops: produce -> consumed p50 {:.2} ms, p90 {:.2} ms; produce -> acknowledged p50 {:.2} ms, p90 {:.2} ms (fetch wait {} ms, producer linger {} ms)",
        percentile(&hops, 0.5),
        percentile(&hops, 0.9),
        percentile(&acks, 0.5),
        percentile(&acks, 0.9),
        bus::fetch_wait_ms(),
        bus::producer_linger_ms(),
    );
    Ok(())
}
