use eventforge::macros::task;

#[task(topik = "orders")]
fn handle(id: u64) -> u64 {
    id
}

fn main() {}
