//! Procedural macros for eventforge, used through the `eventforge` crate
//! with its `macros` feature.
//!
//! `#[task]` turns an async or sync function into a task: next to the
//! function it writes `<name>_task_builder()`, returning a
//! `TaskBuilder` with the macro's options set (add observers there), and
//! `<name>_task()`, returning the built `Task`. The function itself stays
//! callable as written.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, FnArg, Item, ItemFn, LitBool, LitInt, LitStr, Pat, Path, ReturnType, Type,
};

/// Most parameters a task function may take (as for RPC handlers).
const MAX_PARAMS: usize = 8;

const OPTIONS: &str = "name, topic, max_instances, instance_timeout_ms, publish_result, crate";

/// Turns a function into an eventforge task.
///
/// (Run as a doctest in the `eventforge` crate, `eventforge::macros`.)
///
/// ```text
/// use eventforge::macros::task;
/// use eventforge::rpc::HandlerError;
///
/// #[task(topic = "math.add", max_instances = 4, publish_result = true)]
/// async fn add(a: i64, b: i64) -> Result<i64, HandlerError> {
///     Ok(a + b)
/// }
///
/// let task = add_task(); // or add_task_builder().observer(..).build()
/// ```
///
/// Options: `name = "..."` (default: the function's name), `topic = "..."`
/// (default: the name), `max_instances = N`, `instance_timeout_ms = N`,
/// `publish_result = true|false`, `crate = "path"` (the path of the
/// `eventforge` facade, default `::eventforge`, for a renamed dependency;
/// the code uses its `tasks` and `rpc` modules).
///
/// Parameters must be plain `name: Type` with owned, deserialisable types;
/// their names let an object payload bind by name. A function returning
/// `Result<T, E>` keeps its errors; any other return value is a success.
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| options.parse(meta));
    parse_macro_input!(args with parser);
    let item = parse_macro_input!(item as Item);
    let function = match item {
        Item::Fn(function) => function,
        other => {
            return syn::Error::new(
                item_span(&other),
                "#[task] applies to a function (`fn` or `async fn`), not to this item",
            )
            .to_compile_error()
            .into()
        }
    };
    match expand(options, function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn item_span(item: &Item) -> Span {
    // The span of the first tokens (e.g. `struct Name`) reads better than the whole body.
    let tokens = quote!(#item);
    tokens
        .into_iter()
        .next()
        .map(|t| t.span())
        .unwrap_or_else(Span::call_site)
}

#[derive(Default)]
struct Options {
    name: Option<LitStr>,
    topic: Option<LitStr>,
    max_instances: Option<LitInt>,
    instance_timeout_ms: Option<LitInt>,
    publish_result: Option<LitBool>,
    krate: Option<Path>,
}

impl Options {
    fn parse(&mut self, meta: syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
        if meta.path.is_ident("name") {
            self.name = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("topic") {
            self.topic = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("max_instances") {
            let value: LitInt = meta.value()?.parse()?;
            if value.base10_parse::<usize>()? == 0 {
                return Err(syn::Error::new(
                    value.span(),
                    "max_instances must be at least 1",
                ));
            }
            self.max_instances = Some(value);
        } else if meta.path.is_ident("instance_timeout_ms") {
            let value: LitInt = meta.value()?.parse()?;
            value.base10_parse::<u64>()?;
            self.instance_timeout_ms = Some(value);
        } else if meta.path.is_ident("publish_result") {
            self.publish_result = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("crate") {
            let path: LitStr = meta.value()?.parse()?;
            self.krate = Some(path.parse()?);
        } else {
            let path = &meta.path;
            let name = quote!(#path).to_string().replace(' ', "");
            return Err(meta.error(format!(
                "unknown #[task] option `{name}`; expected one of: {OPTIONS}"
            )));
        }
        Ok(())
    }
}

fn expand(options: Options, function: ItemFn) -> syn::Result<TokenStream2> {
    let signature = &function.sig;
    if let Some(param) = signature.generics.params.first() {
        return Err(syn::Error::new(
            param.span(),
            "#[task] functions cannot be generic: arguments are read from JSON into concrete types",
        ));
    }
    if signature.inputs.len() > MAX_PARAMS {
        return Err(syn::Error::new(
            signature.inputs.span(),
            format!("#[task] functions take at most {MAX_PARAMS} parameters"),
        ));
    }
    let mut names = Vec::new();
    let mut types = Vec::new();
    for input in &signature.inputs {
        let typed = match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new(
                    receiver.span(),
                    "#[task] cannot be used on a method taking `self`; use a free function",
                ))
            }
            FnArg::Typed(typed) => typed,
        };
        let name = match &*typed.pat {
            Pat::Ident(ident) if ident.subpat.is_none() && ident.by_ref.is_none() => {
                ident.ident.clone()
            }
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "#[task] parameters must be plain names (`name: Type`): a pattern has no \
                     name to bind a payload field to",
                ))
            }
        };
        if let Type::Reference(reference) = &*typed.ty {
            return Err(syn::Error::new(
                reference.span(),
                "#[task] parameters must be owned types (`String`, not `&str`): arguments \
                 are deserialised from JSON",
            ));
        }
        names.push(name);
        types.push((*typed.ty).clone());
    }

    let krate = options
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::eventforge));
    let fn_name = &signature.ident;
    let vis = &function.vis;
    let task_name = options
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&fn_name.to_string(), fn_name.span()));
    let builder_fn = format_ident!("{}_task_builder", fn_name);
    let task_fn = format_ident!("{}_task", fn_name);
    let param_names: Vec<String> = names.iter().map(ToString::to_string).collect();

    let returns_result = match &signature.output {
        ReturnType::Default => false,
        ReturnType::Type(_, ty) => is_result(ty),
    };
    let invoke = if signature.asyncness.is_some() {
        quote!(#fn_name(#(#names),*).await)
    } else {
        quote!(#fn_name(#(#names),*))
    };
    let outcome = if returns_result {
        invoke
    } else {
        quote!(::core::result::Result::Ok::<_, #krate::rpc::HandlerError>(#invoke))
    };
    let closure = if signature.asyncness.is_some() {
        quote!(|#(#names: #types),*| async move { #outcome })
    } else {
        quote!(|#(#names: #types),*| #outcome)
    };

    let mut options_chain = quote!();
    if let Some(topic) = &options.topic {
        options_chain.extend(quote!(.topic(#topic)));
    }
    if let Some(max) = &options.max_instances {
        options_chain.extend(quote!(.max_instances(#max)));
    }
    if let Some(ms) = &options.instance_timeout_ms {
        options_chain.extend(quote!(.instance_timeout(::core::time::Duration::from_millis(#ms))));
    }
    if let Some(publish) = &options.publish_result {
        options_chain.extend(quote!(.publish_result(#publish)));
    }

    let builder_doc = format!(
        "The options of the task `{}` (from `#[task]` on `{fn_name}`), ready for observers.",
        task_name.value()
    );
    let task_doc = format!(
        "The task `{}` (from `#[task]` on `{fn_name}`).",
        task_name.value()
    );
    let span = fn_name.span();
    Ok(quote_spanned! {span=>
        #function

        #[doc = #builder_doc]
        #vis fn #builder_fn() -> #krate::tasks::TaskBuilder {
            #krate::tasks::Task::builder(#task_name, #closure)
                .params([#(#param_names),*])
                #options_chain
        }

        #[doc = #task_doc]
        #vis fn #task_fn() -> #krate::tasks::Task {
            #builder_fn().build()
        }
    })
}

/// Whether a return type is a `Result` (by its last path segment, which
/// also covers `io::Result` and the like).
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == "Result"),
        Type::Paren(inner) => is_result(&inner.elem),
        Type::Group(inner) => is_result(&inner.elem),
        _ => false,
    }
}
