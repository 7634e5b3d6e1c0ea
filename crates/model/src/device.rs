//! Where a model runs: `cpu`, `cuda`, `cuda:N` or `auto`, parsed in one place so every
//! command (and `train.device`-style settings) means the same thing by the same word, and
//! a build without CUDA says so instead of failing somewhere deep in a kernel.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// A device as the user names it, before it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    /// The GPU with this ordinal.
    Cuda(usize),
    /// The first GPU when this build has CUDA and a GPU answers, else the CPU.
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Self::Cuda)
                    .with_context(|| format!("device {other:?}: the GPU ordinal after `cuda:` is not a number")),
                None => bail!("unknown device {other:?}: expected cpu, cuda, cuda:N or auto"),
            },
        }
    }
}

/// Whether this build of ferrolm was compiled with the CUDA backend (`--features cuda`).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

impl DeviceChoice {
    /// Opens the device. `Cuda` on a build without the feature, or on a machine where the
    /// GPU does not answer, is an error that says which of the two it is.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => open_cuda(n),
            Self::Auto => Ok(if CUDA_BUILT { open_cuda(0).unwrap_or(Device::Cpu) } else { Device::Cpu }),
        }
    }
}

fn open_cuda(ordinal: usize) -> Result<Device> {
    if !CUDA_BUILT {
        bail!(
            "device cuda:{ordinal}: this ferrolm was built without CUDA; rebuild with \
             `cargo build --release --features cuda` (README: GPUs), or use --device cpu"
        );
    }
    Device::new_cuda(ordinal).with_context(|| {
        format!("device cuda:{ordinal}: no usable NVIDIA GPU with that ordinal on this machine (driver or GPU missing)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_names_are_refused() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(3));
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert!("cuda:x".parse::<DeviceChoice>().unwrap_err().to_string().contains("ordinal"));
        assert!("tpu".parse::<DeviceChoice>().unwrap_err().to_string().contains("expected cpu"));
    }

    #[test]
    fn cpu_and_auto_open_without_a_gpu_and_cuda_says_why_it_cannot() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        if !CUDA_BUILT {
            assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
            let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("built without CUDA"), "{err}");
        }
    }
}
