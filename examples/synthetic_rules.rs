//! Writes the synthetic catalog of the benchmarks as a rules directory, for measuring the
//! service with a catalog of any size:
//!
//! ```sh
//! cargo run --release --example synthetic_rules -- 1000 /tmp/rules-1000
//! cargo run --release -- serve --rules /tmp/rules-1000 --data /tmp/data-1000
//! cargo run --release -- loadgen --rules /tmp/rules-1000 --populate --mix decide=1
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(n), Some(dir)) = (args.next(), args.next()) else {
        return Err("usage: synthetic_rules OFFERS DIR".into());
    };
    let n: usize = n
        .parse()
        .map_err(|_| format!("`{n}` is not a number of offers"))?;
    let dir = std::path::PathBuf::from(dir);
    nextbest::decide::synthetic::write_rules(n, &dir)?;
    println!("{n} offers in {}", dir.display());
    Ok(())
}
