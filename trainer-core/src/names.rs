//! One macro for the name tables: an enum of plain variants, each with the name reports,
//! scenario files and command lines use for it. Written once so that `name`, `from_name`,
//! `ALL` and `NAMES` cannot drift apart; trainer-core stays free of dependencies, so this is a
//! `macro_rules!` rather than a derive.

/// Declares an enum of unit variants with their names:
///
/// ```
/// trainer_core::named_enum! {
///     /// What a thing is.
///     pub enum Colour {
///         Red = "red",
///         DarkBlue = "dark-blue",
///     }
/// }
/// assert_eq!(Colour::DarkBlue.name(), "dark-blue");
/// assert_eq!(Colour::from_name("red"), Some(Colour::Red));
/// assert_eq!(Colour::NAMES, ["red", "dark-blue"]);
/// assert_eq!(Colour::Red.to_string(), "red");
/// ```
///
/// The enum derives `Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash`; its order is
/// the order of declaration.
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$( $name::$variant ),+];
            /// Every variant's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$( $text ),+];

            /// The name reports and files use.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }

            /// The variant of that name.
            pub fn from_name(name: &str) -> Option<$name> {
                match name {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl From<$name> for &'static str {
            fn from(value: $name) -> &'static str {
                value.name()
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}
