//! Schemas (RFC 7643): attribute definitions with their characteristics, the
//! resource types built from them, and their JSON representation (§6, §7).

use serde_json::{Map, Value, json};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const HYBRID_SCHEMA: &str = "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object";
pub const CONTACT_SCHEMA: &str = "urn:idbridge:params:scim:schemas:core:2.0:Contact";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Binary,
    Reference,
    Complex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Always,
    Never,
    Default,
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uniqueness {
    None,
    Server,
    Global,
}

/// One attribute of a schema, with the characteristics of RFC 7643 §2.2.
#[derive(Debug, Clone, Copy)]
pub struct AttrDef {
    pub name: &'static str,
    pub kind: AttrType,
    pub multi: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    pub returned: Returned,
    pub uniqueness: Uniqueness,
    pub sub: &'static [AttrDef],
    pub canonical: &'static [&'static str],
    pub reference_types: &'static [&'static str],
    pub description: &'static str,
}

impl AttrDef {
    pub const fn new(name: &'static str, kind: AttrType, description: &'static str) -> Self {
        AttrDef {
            name,
            kind,
            multi: false,
            required: false,
            case_exact: false,
            mutability: Mutability::ReadWrite,
            returned: Returned::Default,
            uniqueness: Uniqueness::None,
            sub: &[],
            canonical: &[],
            reference_types: &[],
            description,
        }
    }
    const fn string(name: &'static str, description: &'static str) -> Self {
        AttrDef::new(name, AttrType::String, description)
    }
    const fn complex(name: &'static str, sub: &'static [AttrDef], description: &'static str) -> Self {
        let mut a = AttrDef::new(name, AttrType::Complex, description);
        a.sub = sub;
        a
    }
    const fn multi(mut self) -> Self {
        self.multi = true;
        self
    }
    const fn required(mut self) -> Self {
        self.required = true;
        self
    }
    const fn exact(mut self) -> Self {
        self.case_exact = true;
        self
    }
    const fn read_only(mut self) -> Self {
        self.mutability = Mutability::ReadOnly;
        self
    }
    const fn immutable(mut self) -> Self {
        self.mutability = Mutability::Immutable;
        self
    }
    const fn write_only(mut self) -> Self {
        self.mutability = Mutability::WriteOnly;
        self.returned = Returned::Never;
        self
    }
    const fn always(mut self) -> Self {
        self.returned = Returned::Always;
        self
    }
    const fn server_unique(mut self) -> Self {
        self.uniqueness = Uniqueness::Server;
        self
    }
    const fn canonical(mut self, values: &'static [&'static str]) -> Self {
        self.canonical = values;
        self
    }
    const fn refs(mut self, types: &'static [&'static str]) -> Self {
        self.reference_types = types;
        self
    }

    /// A sub-attribute by name (case-insensitive).
    pub fn sub_attribute(&self, name: &str) -> Option<&'static AttrDef> {
        self.sub.iter().find(|s| s.name.eq_ignore_ascii_case(name))
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert(
            "type".into(),
            json!(match self.kind {
                AttrType::String => "string",
                AttrType::Boolean => "boolean",
                AttrType::Decimal => "decimal",
                AttrType::Integer => "integer",
                AttrType::DateTime => "dateTime",
                AttrType::Binary => "binary",
                AttrType::Reference => "reference",
                AttrType::Complex => "complex",
            }),
        );
        m.insert("multiValued".into(), json!(self.multi));
        m.insert("description".into(), json!(self.description));
        m.insert("required".into(), json!(self.required));
        if matches!(self.kind, AttrType::String | AttrType::Reference | AttrType::Binary) {
            m.insert("caseExact".into(), json!(self.case_exact));
        }
        m.insert(
            "mutability".into(),
            json!(match self.mutability {
                Mutability::ReadOnly => "readOnly",
                Mutability::ReadWrite => "readWrite",
                Mutability::Immutable => "immutable",
                Mutability::WriteOnly => "writeOnly",
            }),
        );
        m.insert(
            "returned".into(),
            json!(match self.returned {
                Returned::Always => "always",
                Returned::Never => "never",
                Returned::Default => "default",
                Returned::Request => "request",
            }),
        );
        m.insert(
            "uniqueness".into(),
            json!(match self.uniqueness {
                Uniqueness::None => "none",
                Uniqueness::Server => "server",
                Uniqueness::Global => "global",
            }),
        );
        if !self.canonical.is_empty() {
            m.insert("canonicalValues".into(), json!(self.canonical));
        }
        if !self.reference_types.is_empty() {
            m.insert("referenceTypes".into(), json!(self.reference_types));
        }
        if !self.sub.is_empty() {
            m.insert("subAttributes".into(), Value::Array(self.sub.iter().map(AttrDef::to_json).collect()));
        }
        Value::Object(m)
    }
}

/// A schema: its URN and attributes.
#[derive(Debug, Clone, Copy)]
pub struct SchemaDef {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub attributes: &'static [AttrDef],
}

impl SchemaDef {
    pub fn attribute(&self, name: &str) -> Option<&'static AttrDef> {
        self.attributes.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// The RFC 7643 §7 representation, with `meta` for the given base URL.
    pub fn to_json(&self, base_url: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": self.attributes.iter().map(AttrDef::to_json).collect::<Vec<_>>(),
            "meta": {"resourceType": "Schema", "location": format!("{base_url}/Schemas/{}", self.id)},
        })
    }
}

/// The common attributes every resource has (RFC 7643 §3.1).
pub static COMMON: &[AttrDef] = &[
    AttrDef::string("id", "Unique identifier assigned by the service provider.")
        .exact()
        .read_only()
        .always()
        .server_unique(),
    AttrDef::string("externalId", "Identifier assigned by the provisioning client.").exact(),
    AttrDef::complex("meta", META_SUB, "Resource metadata.").read_only(),
];

static META_SUB: &[AttrDef] = &[
    AttrDef::string("resourceType", "The resource type.").exact().read_only(),
    AttrDef::new("created", AttrType::DateTime, "When the resource was added.").read_only(),
    AttrDef::new("lastModified", AttrType::DateTime, "When the resource was last changed.").read_only(),
    AttrDef::new("location", AttrType::Reference, "The resource's URI.").exact().read_only().refs(&["uri"]),
    AttrDef::string("version", "The resource's version (ETag).").exact().read_only(),
];

static NAME_SUB: &[AttrDef] = &[
    AttrDef::string("formatted", "The full name, formatted for display."),
    AttrDef::string("familyName", "Family name."),
    AttrDef::string("givenName", "Given name."),
    AttrDef::string("middleName", "Middle name(s)."),
    AttrDef::string("honorificPrefix", "Honorific prefix, e.g. Ms."),
    AttrDef::string("honorificSuffix", "Honorific suffix, e.g. III."),
];

const fn typed_value_sub(value: AttrDef, types: &'static [&'static str]) -> [AttrDef; 4] {
    [
        value,
        AttrDef::string("display", "A human-readable name."),
        AttrDef::string("type", "The kind of value.").canonical(types),
        AttrDef::new("primary", AttrType::Boolean, "The primary value of the attribute."),
    ]
}

static EMAIL_SUB: &[AttrDef] = &typed_value_sub(AttrDef::string("value", "Email address."), &["work", "home", "other"]);
static PHONE_SUB: &[AttrDef] =
    &typed_value_sub(AttrDef::string("value", "Phone number."), &["work", "home", "mobile", "fax", "pager", "other"]);
static IM_SUB: &[AttrDef] = &typed_value_sub(AttrDef::string("value", "Instant messaging address."), &[]);
static PHOTO_SUB: &[AttrDef] = &typed_value_sub(
    AttrDef::new("value", AttrType::Reference, "Photo URL.").refs(&["external"]),
    &["photo", "thumbnail"],
);
static PLAIN_SUB: &[AttrDef] = &typed_value_sub(AttrDef::string("value", "The value."), &[]);
static CERT_SUB: &[AttrDef] =
    &typed_value_sub(AttrDef::new("value", AttrType::Binary, "DER certificate, base64."), &[]);
static ADDRESS_SUB: &[AttrDef] = &[
    AttrDef::string("formatted", "The full address, formatted for display."),
    AttrDef::string("streetAddress", "Street address."),
    AttrDef::string("locality", "City or locality."),
    AttrDef::string("region", "State or region."),
    AttrDef::string("postalCode", "Postal code."),
    AttrDef::string("country", "Country (ISO 3166-1 alpha-2)."),
    AttrDef::string("type", "The kind of address.").canonical(&["work", "home", "other"]),
    AttrDef::new("primary", AttrType::Boolean, "The primary address."),
];
static USER_GROUPS_SUB: &[AttrDef] = &[
    AttrDef::string("value", "The group's id.").read_only(),
    AttrDef::new("$ref", AttrType::Reference, "The group's URI.").read_only().refs(&["User", "Group"]),
    AttrDef::string("display", "The group's displayName.").read_only(),
    AttrDef::string("type", "direct or indirect membership.").read_only().canonical(&["direct", "indirect"]),
];
static MEMBERS_SUB: &[AttrDef] = &[
    AttrDef::string("value", "The member's id.").immutable(),
    AttrDef::new("$ref", AttrType::Reference, "The member's URI.").immutable().refs(&["User", "Group"]),
    AttrDef::string("display", "The member's display name.").read_only(),
    AttrDef::string("type", "User or Group.").immutable().canonical(&["User", "Group"]),
];

pub static USER: SchemaDef = SchemaDef {
    id: USER_SCHEMA,
    name: "User",
    description: "User Account",
    attributes: &[
        AttrDef::string("userName", "Unique identifier for the user, typically the sign-in name (UPN).")
            .required()
            .server_unique(),
        AttrDef::complex("name", NAME_SUB, "The components of the user's real name."),
        AttrDef::string("displayName", "The name of the user, suitable for display."),
        AttrDef::string("nickName", "The casual way to address the user."),
        AttrDef::new("profileUrl", AttrType::Reference, "A URI of the user's online profile.").refs(&["external"]),
        AttrDef::string("title", "The user's title, e.g. Vice President."),
        AttrDef::string("userType", "The relationship to the organization, e.g. Employee."),
        AttrDef::string("preferredLanguage", "Preferred written or spoken language."),
        AttrDef::string("locale", "Default location for localization."),
        AttrDef::string("timezone", "Time zone (IANA)."),
        AttrDef::new("active", AttrType::Boolean, "The user's administrative status."),
        AttrDef::string("password", "The user's cleartext password (write only).").write_only(),
        AttrDef::complex("emails", EMAIL_SUB, "Email addresses.").multi(),
        AttrDef::complex("phoneNumbers", PHONE_SUB, "Phone numbers.").multi(),
        AttrDef::complex("ims", IM_SUB, "Instant messaging addresses.").multi(),
        AttrDef::complex("photos", PHOTO_SUB, "URLs of photos.").multi(),
        AttrDef::complex("addresses", ADDRESS_SUB, "Physical mailing addresses.").multi(),
        AttrDef::complex("groups", USER_GROUPS_SUB, "The groups the user belongs to.").multi().read_only(),
        AttrDef::complex("entitlements", PLAIN_SUB, "Entitlements.").multi(),
        AttrDef::complex("roles", PLAIN_SUB, "Roles.").multi(),
        AttrDef::complex("x509Certificates", CERT_SUB, "X.509 certificates.").multi(),
    ],
};

pub static GROUP: SchemaDef = SchemaDef {
    id: GROUP_SCHEMA,
    name: "Group",
    description: "Group",
    attributes: &[
        AttrDef::string("displayName", "A human-readable name for the group.").required(),
        AttrDef::complex("members", MEMBERS_SUB, "The members of the group.").multi(),
    ],
};

static MANAGER_SUB: &[AttrDef] = &[
    AttrDef::string("value", "The manager's id."),
    AttrDef::new("$ref", AttrType::Reference, "The manager's URI.").refs(&["User"]),
    AttrDef::string("displayName", "The manager's displayName.").read_only(),
];

pub static ENTERPRISE_USER: SchemaDef = SchemaDef {
    id: ENTERPRISE_USER_SCHEMA,
    name: "EnterpriseUser",
    description: "Enterprise User",
    attributes: &[
        AttrDef::string("employeeNumber", "Employee number."),
        AttrDef::string("costCenter", "Cost center."),
        AttrDef::string("organization", "Organization."),
        AttrDef::string("division", "Division."),
        AttrDef::string("department", "Department."),
        AttrDef::complex("manager", MANAGER_SUB, "The user's manager."),
    ],
};

static PROVISIONING_ERROR_SUB: &[AttrDef] = &[
    AttrDef::string("attribute", "The attribute in conflict.").read_only(),
    AttrDef::string("value", "The value that could not be applied.").read_only(),
    AttrDef::string("reason", "Why.").read_only(),
    AttrDef::new("since", AttrType::DateTime, "Since when.").read_only(),
];

pub static HYBRID: SchemaDef = SchemaDef {
    id: HYBRID_SCHEMA,
    name: "HybridObject",
    description: "An object synchronised from an on-premises directory by idbridge",
    attributes: &[
        AttrDef::string("immutableId", "Base64 sourceAnchor of the on-premises object; never changes once set.")
            .exact()
            .immutable()
            .server_unique(),
        AttrDef::string("onPremisesDistinguishedName", "The on-premises DN."),
        AttrDef::string("onPremisesSamAccountName", "The on-premises sAMAccountName."),
        AttrDef::string("onPremisesDomainName", "The on-premises DNS domain."),
        AttrDef::string("onPremisesSecurityIdentifier", "The on-premises objectSid (S-1-5-…).").exact(),
        AttrDef::string("proxyAddresses", "Mail addresses; SMTP: (upper-case) marks the primary.").multi(),
        AttrDef::string("mailNickname", "Mail alias."),
        AttrDef::string("usageLocation", "Two-letter country code where the user's services are used."),
        AttrDef::string("extensionAttribute1", "Exchange custom attribute 1 (extensionAttribute1 on-premises)."),
        AttrDef::string("extensionAttribute2", "Exchange custom attribute 2 (extensionAttribute2 on-premises)."),
        AttrDef::string("extensionAttribute3", "Exchange custom attribute 3 (extensionAttribute3 on-premises)."),
        AttrDef::string("extensionAttribute4", "Exchange custom attribute 4 (extensionAttribute4 on-premises)."),
        AttrDef::string("extensionAttribute5", "Exchange custom attribute 5 (extensionAttribute5 on-premises)."),
        AttrDef::string("extensionAttribute6", "Exchange custom attribute 6 (extensionAttribute6 on-premises)."),
        AttrDef::string("extensionAttribute7", "Exchange custom attribute 7 (extensionAttribute7 on-premises)."),
        AttrDef::string("extensionAttribute8", "Exchange custom attribute 8 (extensionAttribute8 on-premises)."),
        AttrDef::string("extensionAttribute9", "Exchange custom attribute 9 (extensionAttribute9 on-premises)."),
        AttrDef::string("extensionAttribute10", "Exchange custom attribute 10 (extensionAttribute10 on-premises)."),
        AttrDef::string("extensionAttribute11", "Exchange custom attribute 11 (extensionAttribute11 on-premises)."),
        AttrDef::string("extensionAttribute12", "Exchange custom attribute 12 (extensionAttribute12 on-premises)."),
        AttrDef::string("extensionAttribute13", "Exchange custom attribute 13 (extensionAttribute13 on-premises)."),
        AttrDef::string("extensionAttribute14", "Exchange custom attribute 14 (extensionAttribute14 on-premises)."),
        AttrDef::string("extensionAttribute15", "Exchange custom attribute 15 (extensionAttribute15 on-premises)."),
        AttrDef::new("dirSyncEnabled", AttrType::Boolean, "True while the object is synchronised."),
        AttrDef::complex(
            "provisioningErrors",
            PROVISIONING_ERROR_SUB,
            "Values quarantined by duplicate attribute resiliency.",
        )
        .multi()
        .read_only(),
    ],
};

pub static CONTACT: SchemaDef = SchemaDef {
    id: CONTACT_SCHEMA,
    name: "Contact",
    description: "A mail contact (someone outside the organization)",
    attributes: &[
        AttrDef::string("displayName", "The contact's display name.").required(),
        AttrDef::complex("name", NAME_SUB, "The components of the contact's name."),
        AttrDef::string("title", "Title."),
        AttrDef::string("companyName", "Company."),
        AttrDef::complex("emails", EMAIL_SUB, "Email addresses.").multi(),
        AttrDef::complex("phoneNumbers", PHONE_SUB, "Phone numbers.").multi(),
        AttrDef::complex("addresses", ADDRESS_SUB, "Physical mailing addresses.").multi(),
    ],
};

/// A resource type: its endpoint, core schema and extensions.
#[derive(Debug, Clone, Copy)]
pub struct ResourceType {
    pub name: &'static str,
    pub endpoint: &'static str,
    pub description: &'static str,
    pub schema: &'static SchemaDef,
    pub extensions: &'static [(&'static SchemaDef, bool)],
}

pub static USER_TYPE: ResourceType = ResourceType {
    name: "User",
    endpoint: "/Users",
    description: "User Account",
    schema: &USER,
    extensions: &[(&ENTERPRISE_USER, false), (&HYBRID, false)],
};
pub static GROUP_TYPE: ResourceType = ResourceType {
    name: "Group",
    endpoint: "/Groups",
    description: "Group",
    schema: &GROUP,
    extensions: &[(&HYBRID, false)],
};
pub static CONTACT_TYPE: ResourceType = ResourceType {
    name: "Contact",
    endpoint: "/Contacts",
    description: "Mail contact",
    schema: &CONTACT,
    extensions: &[(&HYBRID, false)],
};

pub static RESOURCE_TYPES: &[&ResourceType] = &[&USER_TYPE, &GROUP_TYPE, &CONTACT_TYPE];
pub static SCHEMAS: &[&SchemaDef] = &[&USER, &GROUP, &ENTERPRISE_USER, &HYBRID, &CONTACT];

/// Where an attribute lives: in which schema (None = common), and its definition.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    /// The extension URN whose JSON object holds the attribute; `None` when
    /// it sits at the top level (core schema or common attributes).
    pub extension: Option<&'static str>,
    pub def: &'static AttrDef,
}

impl ResourceType {
    /// Finds an attribute: a URN picks the schema; without one the core schema
    /// and common attributes come first, then an extension attribute whose
    /// name is unique (clients often leave the URN out).
    pub fn resolve(&self, uri: Option<&str>, name: &str) -> Option<Resolved> {
        if let Some(uri) = uri {
            if uri.eq_ignore_ascii_case(self.schema.id) {
                return self
                    .schema
                    .attribute(name)
                    .or_else(|| COMMON.iter().find(|a| a.name.eq_ignore_ascii_case(name)))
                    .map(|def| Resolved { extension: None, def });
            }
            let (ext, _) = self.extensions.iter().find(|(s, _)| s.id.eq_ignore_ascii_case(uri))?;
            return ext.attribute(name).map(|def| Resolved { extension: Some(ext.id), def });
        }
        if let Some(def) =
            COMMON.iter().find(|a| a.name.eq_ignore_ascii_case(name)).or_else(|| self.schema.attribute(name))
        {
            return Some(Resolved { extension: None, def });
        }
        let mut found = self
            .extensions
            .iter()
            .filter_map(|(s, _)| s.attribute(name).map(|def| Resolved { extension: Some(s.id), def }));
        let first = found.next()?;
        if found.next().is_some() { None } else { Some(first) }
    }

    /// The schema URNs a resource of this type may list in `schemas`.
    pub fn schema_ids(&self) -> impl Iterator<Item = &'static str> + '_ {
        std::iter::once(self.schema.id).chain(self.extensions.iter().map(|(s, _)| s.id))
    }

    pub fn to_json(&self, base_url: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": self.name,
            "name": self.name,
            "endpoint": self.endpoint,
            "description": self.description,
            "schema": self.schema.id,
            "schemaExtensions": self.extensions.iter().map(|(s, req)| json!({"schema": s.id, "required": req})).collect::<Vec<_>>(),
            "meta": {"resourceType": "ResourceType", "location": format!("{base_url}/ResourceTypes/{}", self.name)},
        })
    }
}

pub fn schema_by_id(id: &str) -> Option<&'static SchemaDef> {
    SCHEMAS.iter().copied().find(|s| s.id.eq_ignore_ascii_case(id))
}

pub fn resource_type_by_name(name: &str) -> Option<&'static ResourceType> {
    RESOURCE_TYPES.iter().copied().find(|r| r.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_core_common_and_extensions() {
        let r = USER_TYPE.resolve(None, "USERNAME").unwrap();
        assert_eq!((r.extension, r.def.name), (None, "userName"));
        assert_eq!(USER_TYPE.resolve(None, "id").unwrap().def.mutability, Mutability::ReadOnly);
        let e = USER_TYPE.resolve(Some(ENTERPRISE_USER_SCHEMA), "employeeNumber").unwrap();
        assert_eq!(e.extension, Some(ENTERPRISE_USER_SCHEMA));
        assert_eq!(USER_TYPE.resolve(None, "immutableId").unwrap().extension, Some(HYBRID_SCHEMA));
        assert!(USER_TYPE.resolve(None, "members").is_none());
        assert!(GROUP_TYPE.resolve(Some(ENTERPRISE_USER_SCHEMA), "department").is_none());
        assert!(USER_TYPE.resolve(Some(USER_SCHEMA), "emails").is_some());
    }

    #[test]
    fn schema_json_lists_sub_attributes() {
        let j = USER.to_json("http://x/scim/v2");
        let emails = j["attributes"].as_array().unwrap().iter().find(|a| a["name"] == "emails").unwrap();
        assert_eq!(emails["multiValued"], true);
        assert_eq!(emails["subAttributes"].as_array().unwrap().len(), 4);
        assert_eq!(USER_TYPE.to_json("http://x")["schemaExtensions"].as_array().unwrap().len(), 2);
    }
}
