//! Flow control bounds memory: alone in its test binary, so that the process's peak RSS is
//! this test's.

use std::time::Duration;

use anygrpc::rt::block_on;
use anygrpc_integration_tests::*;

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_slow_reader_of_a_1_gib_stream_keeps_memory_bounded() {
    let server = start();
    let client = server.client();
    let (count, size) = (16 * 1024, 64 * 1024);
    let before = peak_rss_kib();
    let received = block_on(async {
        let mut stream = client
            .server_stream(Payload {
                count,
                response_size: size,
                ..Payload::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = 0usize;
        let mut messages = 0u32;
        while let Some(message) = stream.message().await.unwrap() {
            bytes += message.body.len();
            messages += 1;
            // A slow reader: it stops for a moment every MiB.
            if messages % 16 == 0 {
                async_io::Timer::after(MS).await;
            }
        }
        bytes
    });
    assert_eq!(received, count as usize * size as usize);
    let peak = peak_rss_kib();
    println!("1 GiB streamed; peak RSS {before} KiB before, {peak} KiB after");
    assert!(
        peak < before + 128 * 1024,
        "peak RSS grew from {before} to {peak} KiB"
    );
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
