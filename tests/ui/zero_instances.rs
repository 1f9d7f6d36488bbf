use eventforge::macros::task;

#[task(max_instances = 0)]
fn handle(id: u64) -> u64 {
    id
}

fn main() {}
