//! The tenant's look on its sign-in pages (`idbridge tenant branding set`):
//! stored in the settings, checked before it can reach a style sheet.

use crate::db::Connection;

use crate::store::get_meta;

/// Per-tenant look (`idbridge tenant branding set`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branding {
    pub name: String,
    pub color: String,
    pub background_color: String,
    pub logo_url: Option<String>,
    pub background_url: Option<String>,
    pub text: Option<String>,
}

impl Default for Branding {
    /// The look without any settings.
    fn default() -> Branding {
        Branding {
            name: "idbridge".into(),
            color: "#2f5d8a".into(),
            background_color: "#f3f4f6".into(),
            logo_url: None,
            background_url: None,
            text: None,
        }
    }
}

impl Branding {
    pub fn load(conn: &Connection) -> Branding {
        let get = |k: &str| get_meta(conn, k).ok().flatten().filter(|v| !v.is_empty());
        Branding {
            name: get("branding.name").unwrap_or_else(|| "idbridge".into()),
            color: get("branding.color").filter(|c| is_css_colour(c)).unwrap_or_else(|| "#2f5d8a".into()),
            background_color: get("branding.background_color")
                .filter(|c| is_css_colour(c))
                .unwrap_or_else(|| "#f3f4f6".into()),
            logo_url: get("branding.logo_url"),
            background_url: get("branding.background_url"),
            text: get("branding.text"),
        }
    }
}

/// `#rgb` / `#rrggbb` only: the value lands in a style sheet.
pub fn is_css_colour(c: &str) -> bool {
    c.strip_prefix('#').is_some_and(|h| (h.len() == 3 || h.len() == 6) && h.chars().all(|x| x.is_ascii_hexdigit()))
}

/// Whether a branding image URL is acceptable: https (or a path on the tenant).
pub fn is_image_url(url: &str) -> bool {
    (url.starts_with('/') && !url.starts_with("//"))
        || crate::util::check_web_url(url).is_ok_and(|u| u.scheme() == "https")
}
