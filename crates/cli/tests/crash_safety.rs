//! Crash safety on hostile terms: real `ferrolm` processes (training with a checkpoint every
//! two steps, `tokenizer shards`, `data build --tokenizer`) are killed with SIGKILL at random
//! moments, and then every output that looks complete must be complete and valid, nothing
//! half-written may be taken for whole, and finishing the job (`train --resume`, or running
//! the command again) must give exactly what an uninterrupted run gives: bit-identical
//! weights and optimizer moments, byte-identical shards and kept documents.
//!
//! CI runs a few kills per scenario (seconds). `FERROLM_CRASH_RUNS=N` runs N kill runs per
//! scenario (`FERROLM_CRASH_SEED` picks the random kill times); each run kills repeatedly
//! (a resumed run is killed again with probability 1/2) before letting one finish. The
//! figures (runs, kills, where the kills landed) are printed; `--nocapture` shows them.
//!
//! Write failures: `a_failed_checkpoint_write_leaves_the_previous_one_intact` makes the
//! kernel refuse large writes (RLIMIT_FSIZE through `ulimit -f`, EFBIG: the error a full disk
//! gives as ENOSPC, injected without root or a special filesystem) and
//! `output_under_a_regular_file_is_a_clear_error` writes where a folder cannot be created
//! (works as root, which ignores permission bits). With `FERROLM_CRASH_TMPFS=1` (root, Linux),
//! `a_full_tmpfs_leaves_the_previous_checkpoint_intact` trains into a small tmpfs until it is
//! really full (ENOSPC).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ferrolm_train::checkpoint;

fn ferrolm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrolm"));
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn runs(ci_default: usize) -> usize {
    std::env::var("FERROLM_CRASH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(ci_default)
}

/// splitmix64: the kill times, reproducible from FERROLM_CRASH_SEED.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Self {
        let seed = std::env::var("FERROLM_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261204);
        Rng(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, d: Duration) -> Duration {
        Duration::from_nanos(self.next() % (d.as_nanos() as u64).max(1))
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// Run `cmd`; with `kill_after`, SIGKILL it then if it is still running. Returns the exit
/// status, whether it was killed, and its stderr.
fn run(mut cmd: Command, kill_after: Option<Duration>) -> (ExitStatus, bool, String) {
    let mut child = cmd.spawn().expect("start ferrolm");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut killed = false;
    if let Some(d) = kill_after {
        let t0 = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let left = d.saturating_sub(t0.elapsed());
            if left.is_zero() {
                child.kill().unwrap(); // SIGKILL on Unix
                killed = true;
                break;
            }
            std::thread::sleep(left.min(Duration::from_micros(500)));
        }
    }
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    (status, killed && !status.success(), err)
}

fn must(cmd: Command, what: &str) -> Duration {
    let t0 = Instant::now();
    let (status, _, err) = run(cmd, None);
    assert!(status.success(), "{what} failed: {err}");
    t0.elapsed()
}

/// Prose of a few hundred KB: enough that writing shards takes a while to interrupt.
fn corpus(dir: &Path, docs: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let words = [
        "the", "small", "parser", "reads", "a", "file", "and", "returns", "value", "river", "moves", "under", "old",
        "bridge", "near", "city", "teacher", "writes", "letter", "garden", "window", "opens", "quiet", "engine",
    ];
    let mut s = 7u64;
    for d in 0..docs {
        let mut text = String::new();
        for sent in 0..40 {
            for _ in 0..12 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                text.push_str(words[(s >> 33) as usize % words.len()]);
                text.push(' ');
            }
            text.push_str(if sent % 8 == 7 { ".\n\n" } else { ". " });
        }
        std::fs::write(dir.join(format!("doc{d:04}.txt")), text).unwrap();
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    corpus: PathBuf,
    tok: PathBuf,
    data: PathBuf,
}

fn fixture(docs: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let corpus_dir = root.join("corpus");
    corpus(&corpus_dir, docs);
    let tok = root.join("tok").join("tokenizer.json");
    let mut c = ferrolm();
    c.args(["tokenizer", "train", "--vocab-size", "300", "--input"]).arg(&corpus_dir).arg("--out").arg(&tok);
    must(c, "tokenizer train");
    let data = root.join("data");
    let mut c = ferrolm();
    c.args(["tokenizer", "shards", "--val-fraction", "0.1", "--tokenizer"]).arg(&tok).arg("--input").arg(&corpus_dir).arg("--out").arg(&data);
    must(c, "tokenizer shards");
    Fixture { _tmp: tmp, root, corpus: corpus_dir, tok, data }
}

// ------------------------------------------------------------------ training

const MAX_STEPS: usize = 24;

fn train_config(f: &Fixture) -> PathBuf {
    let cfg = format!(
        r#"[data]
train = "{train}"
val = "{val}"
tokenizer = "{tok}"

[model]
block = "modern"
vocab_size = 320
d_model = 32
n_layers = 1
n_heads = 2
n_kv_heads = 1
max_seq_len = 32
dropout = 0.1

[train]
seed = 7
max_steps = {MAX_STEPS}
batch_size = 4
grad_accum = 2
lr = 3e-3
warmup_steps = 3
eval_interval = 6
eval_batches = 2
checkpoint_interval = 2
keep_checkpoints = 2
log_interval = 1
"#,
        train = f.data.join("train").display(),
        val = f.data.join("val").display(),
        tok = f.tok.display()
    );
    let p = f.root.join("tiny.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn train_cmd(cfg: &Path, run_dir: &Path, resume: bool) -> Command {
    let mut c = ferrolm();
    if resume {
        c.args(["train", "--resume"]).arg(run_dir);
    } else {
        c.args(["train", "--config"]).arg(cfg).arg("--out").arg(run_dir);
    }
    c
}

type Tensors = BTreeMap<String, Vec<u32>>;

/// Every tensor of a safetensors file as the bit patterns of its f32 values.
fn bits(path: &Path) -> Tensors {
    checkpoint::load_tensors(path)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let v: Vec<f32> = t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            (k, v.into_iter().map(f32::to_bits).collect())
        })
        .collect()
}

/// Check every checkpoint that looks complete (a `step-N` folder holding the three files,
/// and whatever `latest` names). Returns the step `latest` names, if any.
fn check_checkpoints(run_dir: &Path) -> Option<usize> {
    let root = checkpoint::checkpoints_dir(run_dir);
    let Ok(entries) = std::fs::read_dir(&root) else { return None };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("step-") else { continue };
        let dir = e.path();
        let files = ["model.safetensors", "optimizer.safetensors", "state.json"];
        if files.iter().all(|f| dir.join(f).is_file()) {
            let state = checkpoint::read_state(&dir).unwrap_or_else(|e| panic!("{name} looks complete but: {e:#}"));
            assert_eq!(state.step, n.parse::<usize>().unwrap(), "{name} holds the state of step {}", state.step);
            checkpoint::load_tensors(&dir.join("model.safetensors")).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            checkpoint::load_tensors(&dir.join("optimizer.safetensors")).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }
    if !root.join("latest").exists() {
        return None;
    }
    let ckpt = checkpoint::latest(run_dir).unwrap_or_else(|e| panic!("`latest` names an incomplete checkpoint: {e:#}"));
    let state = checkpoint::read_state(&ckpt).unwrap_or_else(|e| panic!("the latest checkpoint is corrupt: {e:#}"));
    Some(state.step)
}

#[derive(Default)]
struct KillLog {
    runs: usize,
    kills: usize,
    /// where the kills landed: the step `latest` named right after (None: no checkpoint yet)
    at: BTreeMap<String, usize>,
    /// first attempts that finished before their kill time (run again)
    missed: usize,
}

impl KillLog {
    fn note(&mut self, what: impl Into<String>) {
        self.kills += 1;
        *self.at.entry(what.into()).or_default() += 1;
    }
}

#[test]
fn killed_training_resumes_to_the_same_weights() {
    let f = fixture(60);
    let cfg = train_config(&f);
    let reference = f.root.join("reference");
    let t_ref = must(train_cmd(&cfg, &reference, false), "uninterrupted training");
    let ckpt = checkpoint::latest(&reference).unwrap();
    let (ref_model, ref_opt) = (bits(&ckpt.join("model.safetensors")), bits(&ckpt.join("optimizer.safetensors")));
    assert_eq!(checkpoint::read_state(&ckpt).unwrap().step, MAX_STEPS);

    let n = runs(3);
    let mut rng = Rng::new(1);
    let mut log = KillLog::default();
    for r in 0..n {
        let run_dir = f.root.join(format!("run-{r}"));
        let mut kills_this_run = 0;
        loop {
            let resume = check_checkpoints(&run_dir).is_some();
            // Kill the first attempt always, later ones half the time (at most 6 kills a run).
            let kill = kills_this_run == 0 || (kills_this_run < 6 && rng.coin());
            let after = kill.then(|| rng.below(t_ref.mul_f64(1.15)));
            let (status, killed, err) = run(train_cmd(&cfg, &run_dir, resume), after);
            if killed {
                kills_this_run += 1;
                let latest = check_checkpoints(&run_dir);
                log.note(match latest {
                    None => "before the first checkpoint".to_string(),
                    Some(s) if s == MAX_STEPS => "after the final checkpoint".to_string(),
                    Some(s) => format!("with step {s:02} as latest"),
                });
                continue;
            }
            assert!(status.success(), "run {r}: ferrolm train{} failed after a kill: {err}", if resume { " --resume" } else { "" });
            if kills_this_run == 0 {
                // Finished before the kill: every run gets at least one kill.
                log.missed += 1;
                std::fs::remove_dir_all(&run_dir).unwrap();
                continue;
            }
            break;
        }
        log.runs += 1;
        let ckpt = checkpoint::latest(&run_dir).unwrap();
        assert_eq!(checkpoint::read_state(&ckpt).unwrap().step, MAX_STEPS);
        assert!(bits(&ckpt.join("model.safetensors")) == ref_model, "run {r}: weights differ from the uninterrupted run after {kills_this_run} kills");
        assert!(bits(&ckpt.join("optimizer.safetensors")) == ref_opt, "run {r}: optimizer moments differ after {kills_this_run} kills");
        std::fs::remove_dir_all(&run_dir).unwrap();
    }
    eprintln!(
        "crash harness, training: {} runs, {} kills (uninterrupted run {:.2?}), all resumed to bit-identical weights and moments; {} first attempts finished before their kill and were run again; kills landed: {:?}",
        log.runs, log.kills, t_ref, log.missed, log.at
    );
}

// ------------------------------------------------------------------ shards and corpora

/// Every regular, non-hidden file under `dir` (relative path → bytes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A shard folder with an index must open, verify, and be exactly the reference's.
fn check_shards(dir: &Path, reference: &Path) -> bool {
    if !dir.join("index.json").exists() {
        assert!(
            ferrolm_tokenizer::TokenShards::open(dir).is_err(),
            "a shard folder without index.json opened"
        );
        return false;
    }
    let s = ferrolm_tokenizer::TokenShards::open(dir).unwrap_or_else(|e| panic!("{} has an index but: {e:#}", dir.display()));
    s.verify().unwrap_or_else(|e| panic!("{e:#}"));
    let want = snapshot(reference);
    let got = snapshot(dir);
    let listed: Vec<&String> = s.index().shards.iter().map(|x| &x.file).collect();
    for f in listed {
        assert_eq!(got.get(Path::new(f)), want.get(Path::new(f)), "{}/{f} differs from the uninterrupted run's", dir.display());
    }
    assert_eq!(got.get(Path::new("index.json")), want.get(Path::new("index.json")), "{}: index differs", dir.display());
    true
}

#[test]
fn killed_tokenizer_shards_never_leave_a_half_written_index() {
    let f = fixture(150);
    let shards_cmd = |out: &Path| {
        let mut c = ferrolm();
        c.args(["tokenizer", "shards", "--max-shard-tokens", "2000", "--val-fraction", "0.1", "--tokenizer"])
            .arg(&f.tok)
            .arg("--input")
            .arg(&f.corpus)
            .arg("--out")
            .arg(out);
        c
    };
    let reference = f.root.join("ref-shards");
    let t_ref = must(shards_cmd(&reference), "tokenizer shards");
    let n = runs(4);
    let mut rng = Rng::new(2);
    let mut log = KillLog::default();
    for r in 0..n {
        let out = f.root.join(format!("shards-{r}"));
        // Half the runs start over an earlier complete output (a rerun that is killed).
        if r % 2 == 1 {
            must(shards_cmd(&out), "tokenizer shards");
        }
        let mut kills = 0;
        loop {
            let kill = kills == 0 || (kills < 4 && rng.coin());
            let (status, killed, err) = run(shards_cmd(&out), kill.then(|| rng.below(t_ref.mul_f64(1.1))));
            let done: Vec<bool> = ["train", "val"].iter().map(|p| check_shards(&out.join(p), &reference.join(p))).collect();
            if killed {
                kills += 1;
                log.note(format!("complete (train, val) = {done:?}"));
                continue;
            }
            assert!(status.success(), "tokenizer shards failed after a kill: {err}");
            assert_eq!(done, [true, true]);
            if kills == 0 {
                log.missed += 1;
                continue;
            }
            break;
        }
        log.runs += 1;
        std::fs::remove_dir_all(&out).unwrap();
    }
    eprintln!(
        "crash harness, tokenizer shards: {} runs, {} kills (uninterrupted {:.2?}), no half-written index, every finished output byte-identical; {} attempts finished before their kill; kills landed: {:?}",
        log.runs, log.kills, t_ref, log.missed, log.at
    );
}

#[test]
fn killed_data_build_never_leaves_a_half_written_output() {
    let f = fixture(150);
    let build_cmd = |out: &Path| {
        let mut c = ferrolm();
        c.args(["data", "build", "--input"]).arg(&f.corpus).arg("--out").arg(out).arg("--tokenizer").arg(&f.tok);
        c
    };
    let reference = f.root.join("ref-build");
    let t_ref = must(build_cmd(&reference), "data build");
    let want = snapshot(&reference.join("kept"));
    assert!(!want.is_empty(), "the reference build kept nothing");
    assert!(check_shards(&reference.join("shards"), &reference.join("shards")));
    let n = runs(3);
    let mut rng = Rng::new(3);
    let mut log = KillLog::default();
    for r in 0..n {
        let out = f.root.join(format!("build-{r}"));
        let mut kills = 0;
        loop {
            let kill = kills == 0 || (kills < 4 && rng.coin());
            let (status, killed, err) = run(build_cmd(&out), kill.then(|| rng.below(t_ref.mul_f64(1.1))));
            // Kept documents: a file that exists is the whole file.
            for (p, bytes) in snapshot(&out.join("kept")) {
                assert_eq!(Some(&bytes), want.get(&p), "kept/{} differs from the uninterrupted run's", p.display());
            }
            let shards = check_shards(&out.join("shards"), &reference.join("shards"));
            for m in ["stats.json"].iter().map(|m| out.join(m)).chain(snapshot(&out.join("done")).keys().map(|k| out.join("done").join(k))) {
                if m.exists() {
                    serde_json::from_slice::<serde_json::Value>(&std::fs::read(&m).unwrap())
                        .unwrap_or_else(|e| panic!("{} is not whole: {e}", m.display()));
                }
            }
            if killed {
                kills += 1;
                log.note(format!("shards complete: {shards}"));
                continue;
            }
            assert!(status.success(), "data build failed after a kill: {err}");
            assert!(shards, "a finished data build has no shard index");
            if kills == 0 {
                log.missed += 1;
                std::fs::remove_dir_all(&out).unwrap();
                continue;
            }
            break;
        }
        log.runs += 1;
        std::fs::remove_dir_all(&out).unwrap();
    }
    eprintln!(
        "crash harness, data build: {} runs, {} kills (uninterrupted {:.2?}), every output present was whole and identical; {} attempts finished before their kill; kills landed: {:?}",
        log.runs, log.kills, t_ref, log.missed, log.at
    );
}

// ------------------------------------------------------------------ write failures

/// A finished tiny run to continue (resume with a higher max_steps).
fn trained_run(f: &Fixture, steps: usize) -> PathBuf {
    let cfg = train_config(f);
    let run_dir = f.root.join("base-run");
    let mut c = train_cmd(&cfg, &run_dir, false);
    c.args(["--set", &format!("train.max_steps={steps}")]);
    must(c, "training");
    run_dir
}

fn checkpoint_files(run_dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    snapshot(&checkpoint::checkpoints_dir(run_dir))
}

#[test]
fn a_failed_checkpoint_write_leaves_the_previous_one_intact() {
    let f = fixture(60);
    let run_dir = trained_run(&f, 4);
    let before = checkpoint_files(&run_dir);
    let model_bytes = std::fs::metadata(checkpoint::latest(&run_dir).unwrap().join("model.safetensors")).unwrap().len();
    // The limit lets every other file of the run be rewritten (config, tokenizer, metrics,
    // state) but not the weights. In 512-byte blocks (dash's `ulimit -f`; bash counts KiB,
    // which the assertion below still covers).
    let others = snapshot(&run_dir)
        .iter()
        .filter(|(p, _)| !p.starts_with("checkpoints"))
        .map(|(_, v)| v.len() as u64)
        .max()
        .unwrap();
    let blocks = (others + 8192) / 512;
    assert!(blocks * 1024 < model_bytes, "the tiny model ({model_bytes} bytes) is too small for this test");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("ulimit -f {blocks} && trap '' XFSZ && exec \"$0\" train --resume \"$1\" --set train.max_steps=8"))
        .arg(env!("CARGO_BIN_EXE_ferrolm"))
        .arg(&run_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (status, _, err) = run(c, None);
    assert!(!status.success(), "training with writes over {blocks} blocks refused should fail");
    assert!(err.contains("File too large") || err.contains("too large"), "not a clear error: {err}");
    assert!(err.contains("checkpoints"), "the error does not name the checkpoint being written: {err}");
    assert_eq!(checkpoint_files(&run_dir), before, "the previous checkpoint changed");
    assert_eq!(check_checkpoints(&run_dir), Some(4));
    // and the run continues once the disk has room
    let mut c = train_cmd(Path::new(""), &run_dir, true);
    c.args(["--set", "train.max_steps=8"]);
    must(c, "resume after the failure");
    assert_eq!(check_checkpoints(&run_dir), Some(8));
}

#[test]
fn output_under_a_regular_file_is_a_clear_error() {
    let f = fixture(20);
    let blocker = f.root.join("not-a-folder");
    std::fs::write(&blocker, b"a file").unwrap();
    let cfg = train_config(&f);
    let (status, _, err) = run(train_cmd(&cfg, &blocker.join("run"), false), None);
    assert!(!status.success());
    assert!(err.contains("not-a-folder") && err.contains("Not a directory"), "unclear error: {err}");
    let mut c = ferrolm();
    c.args(["tokenizer", "shards", "--tokenizer"]).arg(&f.tok).arg("--input").arg(&f.corpus).arg("--out").arg(blocker.join("shards"));
    let (status, _, err) = run(c, None);
    assert!(!status.success());
    assert!(err.contains("not-a-folder") && err.contains("Not a directory"), "unclear error: {err}");
    assert_eq!(std::fs::read(&blocker).unwrap(), b"a file");
}

/// Root and Linux only (mounts a tmpfs): `FERROLM_CRASH_TMPFS=1`.
#[test]
fn a_full_tmpfs_leaves_the_previous_checkpoint_intact() {
    if std::env::var("FERROLM_CRASH_TMPFS").as_deref() != Ok("1") {
        eprintln!("skipped: set FERROLM_CRASH_TMPFS=1 (root, Linux) to train into a small tmpfs");
        return;
    }
    let f = fixture(60);
    let run_dir = trained_run(&f, 4);
    let mnt = f.root.join("tmpfs");
    std::fs::create_dir_all(&mnt).unwrap();
    let used: u64 = snapshot(&run_dir).values().map(|v| v.len() as u64).sum();
    // Room for the run, the rewrites of its small files, and half of one more checkpoint.
    let one_ckpt: u64 = snapshot(&checkpoint::latest(&run_dir).unwrap()).values().map(|v| v.len() as u64).sum();
    let small = snapshot(&run_dir).iter().filter(|(p, _)| !p.starts_with("checkpoints")).map(|(_, v)| v.len() as u64).sum::<u64>();
    let size = (used + small + one_ckpt / 2).div_ceil(4096) * 4096;
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}")]).arg("tmpfs").arg(&mnt).status().unwrap();
    assert!(st.success(), "mount tmpfs failed");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let full = mnt.join("run");
    let st = Command::new("cp").arg("-a").arg(&run_dir).arg(&full).status().unwrap();
    assert!(st.success());
    let before = checkpoint_files(&full);
    let mut c = train_cmd(Path::new(""), &full, true);
    c.args(["--set", "train.max_steps=8"]);
    let (status, _, err) = run(c, None);
    assert!(!status.success(), "training into a full filesystem should fail");
    assert!(err.contains("No space left on device"), "not a clear error: {err}");
    assert_eq!(checkpoint_files(&full), before, "the previous checkpoint changed");
    assert_eq!(check_checkpoints(&full), Some(4));
}

/// Regression (found reading the code for this harness): `data build --tokenizer` writes the
/// pipeline's `done/` marker before the shard index. Killed between the two, a rerun skipped
/// the pipeline (marker present) but had already cleared the shard folder, and wrote an
/// index of 0 tokens: an empty output that looked complete.
#[test]
fn data_build_killed_between_marker_and_shard_index_redoes_the_shards() {
    let f = fixture(20);
    let out = f.root.join("build");
    let build = || {
        let mut c = ferrolm();
        c.args(["data", "build", "--input"]).arg(&f.corpus).arg("--out").arg(&out).arg("--tokenizer").arg(&f.tok);
        c
    };
    must(build(), "data build");
    let want = snapshot(&out.join("shards"));
    assert!(out.join("done").read_dir().unwrap().count() > 0, "no completion marker");
    // The state a kill after the marker and before the index leaves.
    std::fs::remove_file(out.join("shards").join("index.json")).unwrap();
    must(build(), "data build after the kill");
    assert_eq!(snapshot(&out.join("shards")), want, "the rerun's shards differ from the first run's");
    // With marker and index both present, a rerun changes nothing.
    must(build(), "data build of a finished output");
    assert_eq!(snapshot(&out.join("shards")), want);
}
