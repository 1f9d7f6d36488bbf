use eventforge::macros::task;

#[task]
fn total((a, b): (i64, i64)) -> i64 {
    a + b
}

fn main() {}
