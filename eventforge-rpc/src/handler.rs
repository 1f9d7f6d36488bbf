//! RPC method handlers: plain or async closures with typed arguments.
//!
//! Modelled on axum's handlers: [`RpcHandler`] is implemented for closures
//! of 0 to 8 arguments, each deserialised from one positional argument of
//! the request; a closure taking one [`Kwargs<T>`] gets a struct built from
//! the named arguments (positional ones fill the struct's fields in order).
//! A closure returns `Result<T, E>` (or a future of it) with `T: Serialize`
//! and `E: Display`; return a [`HandlerError`] to choose the `error_type`
//! the caller sees.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use serde::de::{self, DeserializeOwned, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::wire::{RpcRequest, TYPE_ERROR};
use eventforge_core::message::Message;

/// One call as the server received it: the decoded request and its message.
#[derive(Debug, Clone)]
pub struct IncomingCall {
    /// The decoded request payload.
    pub request: RpcRequest,
    /// The message that carried it (headers, reply routing).
    pub message: Arc<Message>,
}

/// An error a handler returns, with the `error_type` the caller sees.
///
/// Any `std::error::Error` converts into it with `?`; its `error_type` is
/// then the error's type name (`ParseIntError`, ...). Build one with
/// [`HandlerError::new`] to send a class name a Python caller expects
/// (`"ValueError"`, `"ZeroDivisionError"`).
///
/// ```
/// use eventforge_rpc::HandlerError;
///
/// fn divide(a: f64, b: f64) -> Result<f64, HandlerError> {
///     if b == 0.0 {
///         return Err(HandlerError::new("ZeroDivisionError", "division by zero"));
///     }
///     Ok(a / b)
/// }
/// let parsed: Result<i64, HandlerError> = "x".parse::<i64>().map_err(Into::into);
/// assert_eq!(parsed.unwrap_err().error_type(), "ParseIntError");
/// assert!(divide(1.0, 0.0).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    error_type: String,
    message: String,
}

impl HandlerError {
    /// An error of class `error_type` with text `message`.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError {
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// The short class name sent as `error_type`.
    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    /// The text sent as `error`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A `TypeError`: the arguments do not fit the method.
    pub fn type_error(message: impl Into<String>) -> Self {
        Self::new(TYPE_ERROR, message)
    }

    /// Wraps any displayable error; a `HandlerError` passes through unchanged.
    pub(crate) fn from_display<E: fmt::Display + 'static>(error: E) -> Self {
        let any: &dyn Any = &error;
        if let Some(handler_error) = any.downcast_ref::<HandlerError>() {
            return handler_error.clone();
        }
        HandlerError::new(short_type_name::<E>(), error.to_string())
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl<E: std::error::Error + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::new(short_type_name::<E>(), error.to_string())
    }
}

/// `core::num::error::ParseIntError` → `ParseIntError`; strings → `Error`.
fn short_type_name<E: 'static>() -> String {
    let full = std::any::type_name::<E>();
    let base = full.split('<').next().unwrap_or(full);
    let short = base
        .rsplit("::")
        .next()
        .unwrap_or(base)
        .trim_start_matches('&');
    match short {
        "" | "str" | "String" | "Cow" => "Error".to_owned(),
        other => other.to_owned(),
    }
}

/// What one handler call produces: a JSON result or an error.
pub type Outcome = Result<Value, HandlerError>;

/// What a handler's (or its future's) output may be: `Result<T, E>` with
/// `T: Serialize` and `E: Display`.
pub trait IntoOutcome: Send + 'static {
    /// The JSON result or the error to send.
    fn into_outcome(self) -> Outcome;
}

impl<T, E> IntoOutcome for Result<T, E>
where
    T: Serialize + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(value) => serde_json::to_value(value)
                .map_err(|e| HandlerError::new("EncodeError", format!("result is not JSON: {e}"))),
            Err(error) => Err(HandlerError::from_display(error)),
        }
    }
}

/// Marker for handlers returning a future (`|a: i64| async move { .. }`).
#[derive(Debug)]
pub enum AsyncReturn {}

/// Marker for handlers returning a `Result` directly. They run on the
/// server's task and must not block: blocking work belongs on
/// `tokio::task::spawn_blocking` or an executor of `eventforge-tasks`.
#[derive(Debug)]
pub enum SyncReturn {}

/// What a handler closure returns: a future of an [`IntoOutcome`]
/// ([`AsyncReturn`]) or an [`IntoOutcome`] itself ([`SyncReturn`]).
pub trait RpcReturn<Kind>: Send + 'static {
    /// The future of the call's outcome.
    fn into_outcome_future(self) -> BoxFuture<'static, Outcome>;
}

impl<Fut> RpcReturn<AsyncReturn> for Fut
where
    Fut: Future + Send + 'static,
    Fut::Output: IntoOutcome,
{
    fn into_outcome_future(self) -> BoxFuture<'static, Outcome> {
        self.map(IntoOutcome::into_outcome).boxed()
    }
}

impl<R: IntoOutcome> RpcReturn<SyncReturn> for R {
    fn into_outcome_future(self) -> BoxFuture<'static, Outcome> {
        futures::future::ready(self.into_outcome()).boxed()
    }
}

/// A method implementation the [`RpcServer`](crate::RpcServer) can call.
///
/// Implemented for closures `Fn(A1, .., An) -> R` (n = 0..=8) where each
/// `Ai: DeserializeOwned` is read from positional argument i, and for
/// `Fn(Kwargs<T>) -> R`. `R` is a `Result<T: Serialize, E: Display>` or a
/// future of one. The `Args` parameter only tells the forms apart; it is
/// inferred.
pub trait RpcHandler<Args>: Send + Sync + 'static {
    /// Extracts the arguments and starts the call.
    fn call(&self, call: IncomingCall) -> BoxFuture<'static, Outcome>;
}

/// Named arguments as one struct: the handler form for `kwargs`.
///
/// The request's `kwargs` fill the struct's fields by name; positional
/// `args`, if any, fill its fields in declaration order first (as Python
/// binds them). A field given both ways is a `TypeError`.
///
/// ```
/// use eventforge_rpc::{HandlerError, Kwargs, RpcServer};
/// use eventforge_core::MessageQueue;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Greet { name: String, punct: Option<String> }
///
/// let server = RpcServer::new(MessageQueue::memory());
/// server.register("greet", |Kwargs(g): Kwargs<Greet>| {
///     Ok::<_, HandlerError>(format!("hello {}{}", g.name, g.punct.unwrap_or_default()))
/// });
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Kwargs<T>(pub T);

fn ready_error(error: HandlerError) -> BoxFuture<'static, Outcome> {
    futures::future::ready(Err(error)).boxed()
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

macro_rules! positional_handler {
    ($count:expr; $($ty:ident $var:ident),*) => {
        impl<F, R, K, $($ty,)*> RpcHandler<(K, ($($ty,)*))> for F
        where
            F: Fn($($ty),*) -> R + Send + Sync + 'static,
            R: RpcReturn<K>,
            K: 'static,
            $($ty: DeserializeOwned + Send + 'static,)*
        {
            #[allow(unused_variables, unused_mut)]
            fn call(&self, call: IncomingCall) -> BoxFuture<'static, Outcome> {
                let IncomingCall { request, .. } = call;
                let method = request.method;
                if let Some(name) = request.kwargs.keys().next() {
                    return ready_error(HandlerError::type_error(format!(
                        "{method}() got an unexpected keyword argument '{name}' \
                         (it takes positional arguments only)"
                    )));
                }
                if request.args.len() != $count {
                    return ready_error(HandlerError::type_error(format!(
                        "{method}() takes {} positional argument{} but {} were given",
                        $count,
                        plural($count),
                        request.args.len()
                    )));
                }
                let mut args = request.args.into_iter();
                let mut position = 0usize;
                $(
                    position += 1;
                    let $var: $ty = match args.next().map(serde_json::from_value::<$ty>) {
                        Some(Ok(value)) => value,
                        Some(Err(error)) => {
                            return ready_error(HandlerError::type_error(format!(
                                "{method}() argument {position} has the wrong type: {error}"
                            )))
                        }
                        None => {
                            return ready_error(HandlerError::type_error(format!(
                                "{method}() missing positional argument {position}"
                            )))
                        }
                    };
                )*
                (self)($($var),*).into_outcome_future()
            }
        }
    };
}

positional_handler!(0;);
positional_handler!(1; A1 a1);
positional_handler!(2; A1 a1, A2 a2);
positional_handler!(3; A1 a1, A2 a2, A3 a3);
positional_handler!(4; A1 a1, A2 a2, A3 a3, A4 a4);
positional_handler!(5; A1 a1, A2 a2, A3 a3, A4 a4, A5 a5);
positional_handler!(6; A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6);
positional_handler!(7; A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7);
positional_handler!(8; A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7, A8 a8);

impl<F, R, K, T> RpcHandler<(K, Kwargs<T>)> for F
where
    F: Fn(Kwargs<T>) -> R + Send + Sync + 'static,
    R: RpcReturn<K>,
    K: 'static,
    T: DeserializeOwned + Send + 'static,
{
    fn call(&self, call: IncomingCall) -> BoxFuture<'static, Outcome> {
        let request = call.request;
        match bind_kwargs::<T>(&request.method, request.args, request.kwargs) {
            Ok(value) => (self)(Kwargs(value)).into_outcome_future(),
            Err(error) => ready_error(error),
        }
    }
}

/// Marker of the raw handler form, see [`RpcServer::register_raw`](crate::RpcServer::register_raw).
#[derive(Debug)]
pub enum Raw {}

/// A handler that sees the whole [`IncomingCall`] and returns JSON.
pub(crate) struct RawHandler<F>(pub(crate) F);

impl<F, Fut> RpcHandler<Raw> for RawHandler<F>
where
    F: Fn(IncomingCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn call(&self, call: IncomingCall) -> BoxFuture<'static, Outcome> {
        (self.0)(call).boxed()
    }
}

/// Builds `T` from kwargs, with positional args bound to `T`'s fields in order.
fn bind_kwargs<T: DeserializeOwned>(
    method: &str,
    args: Vec<Value>,
    mut kwargs: Map<String, Value>,
) -> Result<T, HandlerError> {
    if !args.is_empty() {
        let fields = struct_fields::<T>().unwrap_or(&[]);
        if args.len() > fields.len() {
            return Err(HandlerError::type_error(format!(
                "{method}() takes {} positional argument{} but {} were given",
                fields.len(),
                plural(fields.len()),
                args.len()
            )));
        }
        for (field, value) in fields.iter().zip(args) {
            if kwargs.contains_key(*field) {
                return Err(HandlerError::type_error(format!(
                    "{method}() got multiple values for argument '{field}'"
                )));
            }
            kwargs.insert((*field).to_owned(), value);
        }
    }
    let mut reading = None;
    T::deserialize(NamedArguments {
        entries: kwargs.into_iter(),
        reading: &mut reading,
    })
    .map_err(|error| match reading {
        // A value of the wrong shape: name the argument being read.
        Some(name) => HandlerError::type_error(format!(
            "{method}() argument '{name}' has the wrong type: {error}"
        )),
        // Missing arguments and the like: serde's text names the field.
        None => HandlerError::type_error(format!("{method}() arguments do not fit: {error}")),
    })
}

/// Named arguments read as a map, remembering which one is being read so
/// that a type error can name it.
struct NamedArguments<'a> {
    entries: serde_json::map::IntoIter,
    reading: &'a mut Option<String>,
}

impl<'de> de::Deserializer<'de> for NamedArguments<'_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(NamedArgumentAccess {
            entries: self.entries,
            reading: self.reading,
            value: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct NamedArgumentAccess<'a> {
    entries: serde_json::map::IntoIter,
    reading: &'a mut Option<String>,
    // The value of the key just handed out.
    value: Option<Value>,
}

impl<'de> de::MapAccess<'de> for NamedArgumentAccess<'_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((name, value)) = self.entries.next() else {
            *self.reading = None;
            return Ok(None);
        };
        self.value = Some(value);
        let key = seed.deserialize(
            de::IntoDeserializer::<serde_json::Error>::into_deserializer(name.as_str()),
        )?;
        *self.reading = Some(name);
        Ok(Some(key))
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let value = self.value.take().unwrap_or(Value::Null);
        let read = seed.deserialize(value)?;
        *self.reading = None;
        Ok(read)
    }
}

/// The field names of a `#[derive(Deserialize)]` struct, in declaration
/// order, learnt by asking its `Deserialize` impl to read from a probe.
fn struct_fields<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let mut probe = FieldProbe(None);
    let _ = T::deserialize(&mut probe);
    probe.0
}

struct FieldProbe(Option<&'static [&'static str]>);

#[derive(Debug)]
struct ProbeDone;

impl fmt::Display for ProbeDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for ProbeDone {}

impl de::Error for ProbeDone {
    fn custom<M: fmt::Display>(_: M) -> Self {
        ProbeDone
    }
}

impl<'de> de::Deserializer<'de> for &mut FieldProbe {
    type Error = ProbeDone;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeDone> {
        Err(ProbeDone)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeDone> {
        self.0 = Some(fields);
        Err(ProbeDone)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Greet {
        name: String,
        punct: String,
    }

    #[test]
    fn positional_args_bind_to_struct_fields_in_order() {
        let mut kwargs = Map::new();
        kwargs.insert("punct".into(), "!".into());
        let greet: Greet = bind_kwargs("greet", vec!["bob".into()], kwargs).unwrap();
        assert_eq!(
            greet,
            Greet {
                name: "bob".into(),
                punct: "!".into()
            }
        );
    }

    #[test]
    fn an_argument_given_twice_is_a_type_error_naming_it() {
        let mut kwargs = Map::new();
        kwargs.insert("name".into(), "al".into());
        let err = bind_kwargs::<Greet>("greet", vec!["bob".into()], kwargs).unwrap_err();
        assert_eq!(err.error_type(), "TypeError");
        assert!(err.message().contains("'name'"), "{err}");
    }

    #[test]
    fn a_missing_named_argument_is_a_type_error_naming_it() {
        let err = bind_kwargs::<Greet>("greet", vec!["bob".into()], Map::new()).unwrap_err();
        assert!(err.message().contains("punct"), "{err}");
        assert!(err.message().starts_with("greet()"), "{err}");
    }

    #[test]
    fn a_named_argument_of_the_wrong_type_is_named() {
        let mut kwargs = Map::new();
        kwargs.insert("name".into(), "bob".into());
        kwargs.insert("punct".into(), 3.into());
        let err = bind_kwargs::<Greet>("greet", Vec::new(), kwargs).unwrap_err();
        assert_eq!(err.error_type(), "TypeError");
        assert!(
            err.message().starts_with("greet() argument 'punct'"),
            "{err}"
        );
    }

    #[test]
    fn a_positional_argument_bound_to_a_field_is_named_by_that_field() {
        let err =
            bind_kwargs::<Greet>("greet", vec![1.into(), "!".into()], Map::new()).unwrap_err();
        assert!(err.message().contains("argument 'name'"), "{err}");
    }

    #[test]
    fn error_type_is_the_short_type_name() {
        assert_eq!(
            short_type_name::<std::num::ParseIntError>(),
            "ParseIntError"
        );
        assert_eq!(short_type_name::<String>(), "Error");
        assert_eq!(short_type_name::<&'static str>(), "Error");
        let e = HandlerError::from_display(HandlerError::new("ValueError", "bad"));
        assert_eq!(e.error_type(), "ValueError");
    }
}
