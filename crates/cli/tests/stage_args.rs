//! The alignment stages' command lines parse as README.md writes them. `ferrolm rlhf …` once
//! always answered "give --model, --reward, --data and --out": its arguments were an
//! `Option` of a struct with a nested flatten, which clap (issue 4697) never fills.

use std::process::Command;

fn ferrolm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrolm")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn rlhf_dpo_and_reward_command_lines_reach_their_stage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let missing = "/nonexistent/ferrolm-start";
    for args in [
        vec!["rlhf", "--model", missing, "--reward", "/nonexistent/rm", "--data", "/nonexistent/p.jsonl", "--out", out, "--set", "train.max_steps=1"],
        vec!["dpo", "--model", missing, "--data", "/nonexistent/p.jsonl", "--out", out],
        vec!["reward", "train", "--model", missing, "--data", "/nonexistent/p.jsonl", "--out", out],
    ] {
        let (code, err) = ferrolm(&args);
        // parsed: the stage itself fails on the missing start, not clap (exit code 2)
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("/nonexistent/"), "{args:?}: {err}");
    }
    // `rlhf compare` needs no --out; the training form does
    let (code, err) = ferrolm(&["rlhf", "compare", "--policy", missing, "--baseline", missing, "--reward", "/nonexistent/rm", "--data", "/nonexistent/p.jsonl"]);
    assert_eq!(code, 1, "{err}");
    let (code, err) = ferrolm(&["rlhf", "--model", missing, "--reward", "/nonexistent/rm", "--data", "/nonexistent/p.jsonl"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--out"), "{err}");
}
