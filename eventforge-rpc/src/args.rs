//! Positional arguments of a call, from a tuple or a vector.

use serde::Serialize;
use serde_json::Value;

/// Values that become the positional `args` of a call: `()`, tuples of up
/// to 8 `Serialize` values, and `Vec<Value>`.
///
/// ```
/// use eventforge_rpc::IntoArgs;
///
/// assert_eq!((1, "two").into_args()?, vec![serde_json::json!(1), serde_json::json!("two")]);
/// assert!(().into_args()?.is_empty());
/// # Ok::<(), serde_json::Error>(())
/// ```
pub trait IntoArgs {
    /// The arguments as JSON values.
    fn into_args(self) -> Result<Vec<Value>, serde_json::Error>;
}

impl IntoArgs for () {
    fn into_args(self) -> Result<Vec<Value>, serde_json::Error> {
        Ok(Vec::new())
    }
}

impl IntoArgs for Vec<Value> {
    fn into_args(self) -> Result<Vec<Value>, serde_json::Error> {
        Ok(self)
    }
}

macro_rules! tuple_args {
    ($($ty:ident $var:ident),+) => {
        impl<$($ty: Serialize),+> IntoArgs for ($($ty,)+) {
            fn into_args(self) -> Result<Vec<Value>, serde_json::Error> {
                let ($($var,)+) = self;
                Ok(vec![$(serde_json::to_value($var)?),+])
            }
        }
    };
}

tuple_args!(A1 a1);
tuple_args!(A1 a1, A2 a2);
tuple_args!(A1 a1, A2 a2, A3 a3);
tuple_args!(A1 a1, A2 a2, A3 a3, A4 a4);
tuple_args!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5);
tuple_args!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6);
tuple_args!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7);
tuple_args!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7, A8 a8);
