//! `ferrolm dpo --model SFT_RUN --data PREFS… --out DIR [--set dpo.beta=0.1]`: direct
//! preference optimisation against a frozen copy of the starting model.

use anyhow::Result;

use super::align_args::StageArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    stage: StageArgs,
}

pub fn run(a: Args) -> Result<()> {
    let out = ferrolm_align::dpo::train(&a.stage.options()?)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
