//! Packs a fuzzer's corpus directory into one file for `cargo test` to replay:
//! `cargo run -p novacron-fuzz --example pack -- DIR rust/fuzz/corpus/<target>.pack`
//! (each input as a 4-byte little-endian length and its bytes, in name order).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [dir, out] = args.as_slice() else {
        eprintln!("usage: pack DIR OUT");
        std::process::exit(2);
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    let mut packed = Vec::new();
    for file in &files {
        let data = std::fs::read(file)?;
        let len = u32::try_from(data.len()).expect("inputs under 4 GiB");
        packed.extend_from_slice(&len.to_le_bytes());
        packed.extend_from_slice(&data);
    }
    std::fs::write(out, &packed)?;
    eprintln!("{} inputs, {} bytes", files.len(), packed.len());
    Ok(())
}
