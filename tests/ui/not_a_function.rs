use eventforge::macros::task;

#[task]
struct Order {
    id: u64,
}

fn main() {}
