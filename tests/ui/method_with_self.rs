use eventforge::macros::task;

struct Cart;

impl Cart {
    #[task]
    fn total(&self, extra: i64) -> i64 {
        extra
    }
}

fn main() {}
