fn main() { eprintln!("benchmark: not yet written"); }
