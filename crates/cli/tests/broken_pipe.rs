//! Streaming commands stop quietly when the reader of their output goes away
//! (`ferrolm ngram query … | head`): exit status 0, nothing on stderr, no panic.

use std::io::Read;
use std::process::{Command, Stdio};

fn ferrolm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferrolm"))
}

#[test]
fn ngram_query_into_a_closed_pipe_exits_quietly() {
    let dir = std::env::temp_dir().join(format!("ferrolm-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = 1u64;
    let mut text = String::new();
    for _ in 0..3000 {
        for _ in 0..12 {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            text.push_str(&format!("w{} ", (s >> 33) % 200));
        }
        text.push('\n');
    }
    let corpus = dir.join("c.txt");
    std::fs::write(&corpus, &text).unwrap();
    let arpa = dir.join("m.arpa");
    let st = ferrolm().args(["ngram", "train", "--order", "3", "--input"]).arg(&corpus).arg("--arpa").arg(&arpa).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    // ~36k words of `word=id n log10p` output: far more than a pipe buffer holds
    let mut child = ferrolm()
        .args(["ngram", "query", "--model"])
        .arg(&arpa)
        .arg("--input")
        .arg(&corpus)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take()); // the reader goes away, as `head` does
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {:?}, stderr: {err}", out.status);
    assert!(!err.contains("panicked") && !err.contains("error"), "stderr: {err}");
    std::fs::remove_dir_all(&dir).ok();
}
