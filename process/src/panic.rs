//! A caught panic as a message: both binaries turn a panic into a step failure (the
//! worker, a handler's; the dispatcher, its own while applying an event) and must say what
//! it was.

use std::any::Any;

/// The text of a panic's payload (`panic!` with a literal or a formatted message), or a
/// note that it had none.
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_messages() {
        assert_eq!(message(&"boom"), "boom");
        assert_eq!(message(&String::from("bang")), "bang");
        assert_eq!(message(&42), "a non-text panic payload");
    }
}
