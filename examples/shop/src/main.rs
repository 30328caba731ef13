//! `shop`: the tutorial application's program. `shop up --nodes 4` runs a local cluster of
//! it; `shop client send Stock@apple '{"Restock": {"quantity": 10}}'` talks to it; `shop
//! --help` lists the rest.

fn main() -> std::process::ExitCode {
    chorus_shop::application().main()
}
