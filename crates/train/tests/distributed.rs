//! Data parallelism: two ranks that split each step's micro-batches train the same model
//! as one process that takes them all, and stay identical to each other.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use ferrolm_model::{BlockStyle, ModelSpec, TransformerConfig};
use ferrolm_train::checkpoint;
use ferrolm_train::config::{RunConfig, TrainConfig};
use ferrolm_train::distributed::{Communicator, LocalGroup, TcpGroup};
use ferrolm_train::{start_run, ArchData};

fn cfg(grad_accum: usize) -> RunConfig {
    RunConfig {
        model: ModelSpec::Transformer(TransformerConfig {
            vocab_size: 16,
            d_model: 32,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            max_seq_len: 16,
            block: BlockStyle::Modern,
            dropout: 0.1,
            ..Default::default()
        }),
        train: TrainConfig {
            max_steps: 6,
            batch_size: 2,
            lr: 3e-3,
            warmup_steps: 2,
            grad_accum,
            eval_interval: 0,
            eval_batches: 1,
            checkpoint_interval: 0,
            log_interval: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn stream(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * i + 3 * i) % 13) as u32 + if i % 7 == 0 { 1 } else { 0 }).collect()
}

fn weights(varmap: &VarMap) -> HashMap<String, Vec<f32>> {
    let vars = varmap.data().lock().unwrap();
    vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

/// Fails the test instead of hanging it when a rank dies and leaves the others waiting in
/// an all-reduce.
fn watchdog() -> std::sync::mpsc::Sender<()> {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(std::time::Duration::from_secs(600)) {
            eprintln!("a rank is stuck (did another rank panic? see above)");
            std::process::exit(101);
        }
    });
    done
}

/// Trains `cfg(4)` on `members.len()` ranks in threads; returns each rank's final weights.
fn train_ranks(members: Vec<Box<dyn Communicator>>, dir: &std::path::Path, data: &Vec<u32>, val: &Vec<u32>) -> Vec<HashMap<String, Vec<f32>>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|comm| {
                s.spawn(move || {
                    let mut t = start_run(&cfg(4), dir, ArchData::Stream { train: data, val }, vec![1; 16], None, &Device::Cpu, false).unwrap();
                    t.quiet = true;
                    t.set_communicator(comm).unwrap();
                    t.run().unwrap();
                    weights(&t.varmap)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_close(a: &HashMap<String, Vec<f32>>, b: &HashMap<String, Vec<f32>>, tol: f32) {
    assert_eq!(a.len(), b.len());
    for (name, wa) in a {
        let wb = &b[name];
        let worst = wa.iter().zip(wb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= tol, "{name}: max |Δ| {worst}");
    }
}

#[test]
fn two_ranks_train_the_model_one_process_trains() {
    let _done = watchdog();
    let (data, val) = (stream(3000), stream(400));
    let dir = tempfile::tempdir().unwrap();
    let single_dir = dir.path().join("single");
    let mut single = start_run(&cfg(4), &single_dir, ArchData::Stream { train: &data, val: &val }, vec![1; 16], None, &Device::Cpu, false).unwrap();
    single.quiet = true;
    single.run().unwrap();
    let one = weights(&single.varmap);

    for (label, members) in [
        ("threads", LocalGroup::new(2).into_iter().map(|g| Box::new(g) as Box<dyn Communicator>).collect::<Vec<_>>()),
        ("tcp", tcp_group(2)),
    ] {
        let run_dir = dir.path().join(label);
        let ranks = train_ranks(members, &run_dir, &data, &val);
        // The ranks hold bit-identical weights: same sums, same update.
        assert_eq!(ranks[0], ranks[1], "{label}: ranks diverged");
        // And the model one process trains, up to the order of the gradient additions.
        assert_close(&one, &ranks[0], 1e-5);
        // Rank 0 wrote the run's checkpoint and metrics; they hold its weights.
        let saved = checkpoint::load_tensors(&checkpoint::latest(&run_dir).unwrap().join("model.safetensors")).unwrap();
        for (name, w) in &ranks[0] {
            let t: &Tensor = &saved[name];
            assert_eq!(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), w, "{label}: checkpoint of {name}");
        }
        let steps = ferrolm_train::metrics::read(&run_dir.join("metrics.jsonl")).unwrap().iter().filter(|r| r.loss.is_some()).count();
        assert_eq!(steps, 6, "{label}: one metrics line per step, from rank 0 only");
    }
}

fn tcp_group(world: usize) -> Vec<Box<dyn Communicator>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let joiners: Vec<_> = (1..world)
        .map(|r| {
            let e = endpoint.clone();
            std::thread::spawn(move || TcpGroup::connect(&e, r, world, std::time::Duration::from_secs(20)).unwrap())
        })
        .collect();
    let mut members: Vec<Box<dyn Communicator>> = vec![Box::new(TcpGroup::accept(listener, world, std::time::Duration::from_secs(20)).unwrap())];
    members.extend(joiners.into_iter().map(|j| Box::new(j.join().unwrap()) as Box<dyn Communicator>));
    members
}

#[test]
fn grad_accum_must_split_evenly_over_the_ranks() {
    let (data, val) = (stream(3000), stream(400));
    let dir = tempfile::tempdir().unwrap();
    let mut t = start_run(&cfg(4), dir.path(), ArchData::Stream { train: &data, val: &val }, vec![1; 16], None, &Device::Cpu, false).unwrap();
    let err = t.set_communicator(Box::new(LocalGroup::new(3).remove(0))).unwrap_err().to_string();
    assert!(err.contains("multiple of WORLD_SIZE = 3"), "{err}");
}
