/*
 * ota_auth: device identity for Mosquitto 2.0 (plugin API version 5).
 *
 * Why a plugin of our own (docs/security.md "Device identity"): Mosquitto's dynamic-security
 * plugin needs two objects per device (2.0 ACLs have no %u/%c patterns), saves its whole
 * configuration after every command (registration is O(N^2)), and stores fixed passwords, so
 * Alibaba's SDKs that sign a fresh timestamp at every connect cannot sign in. Here:
 *
 * - Users live in a hash table keyed by username. A device user is `{dn}&{pk}` with its
 *   DeviceSecret (the broker must hold it to check the HMAC, as Alibaba's broker does); a service
 *   user has a salted SHA-256 of its password and a list of ACL rules sent by ota
 *   (ota/identity/accounts.py is the single source of those rules).
 * - BASIC_AUTH checks Alibaba's signature (../../../shared/PROTOCOL.md, "Device
 *   authentication"): client id `{cid}|k=v,...|` where cid is `{pk}.{dn}` or `{pk}&{dn}` of the
 *   username, password hex(HMAC_signmethod(secret, "clientId{cid}deviceName{dn}productKey{pk}"
 *   ["timestamp{ts}"])). The timestamp is not checked for freshness (SDKs use fixed far-future
 *   ones); what it buys is that a device cannot take anyone else's client id.
 * - ACL_CHECK: a device publishes its inform/progress/status topics and under /sys/{pk}/{dn}/,
 *   subscribes its upgrade topic and under /sys/{pk}/{dn}/; a service does what its rules say;
 *   the admin uses the control topic. Everything else is denied.
 * - CONTROL on $CONTROL/ota-auth/v1, for the admin user only: {"commands":[...]} in,
 *   {"responses":[...]} out, the table saved once per message (tmp file 0600, fsync, rename),
 *   or with a later message when this one says "deferSave": true (a sync's messages but its
 *   last: the changes are live at once, durable with the last).
 *
 * Options (mosquitto.conf):
 *   plugin_opt_users_file PATH                     the persisted table (created when missing)
 *   plugin_opt_admin_username NAME                 default ota-admin
 *   plugin_opt_admin_password_sha256 SALTHEX:HEX   SHA-256(salt || password), hex
 * The admin lives in mosquitto.conf, not in the users file: no control command can change it,
 * and deleting the users file (a sync rebuilds it) never locks ota out.
 */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* Debian's mosquitto-dev has no mosquitto.h: the values below are 2.0's (include/mosquitto.h). */
#ifndef MOSQ_ERR_SUCCESS
#define MOSQ_ERR_SUCCESS 0
#define MOSQ_ERR_NOMEM 1
#define MOSQ_ERR_INVAL 3
#define MOSQ_ERR_AUTH 11
#define MOSQ_ERR_ACL_DENIED 12
#define MOSQ_ERR_UNKNOWN 13
#endif
#ifndef MOSQ_LOG_INFO
#define MOSQ_LOG_INFO (1 << 0)
#define MOSQ_LOG_NOTICE (1 << 1)
#define MOSQ_LOG_WARNING (1 << 2)
#define MOSQ_LOG_ERR (1 << 3)
#endif

#define CONTROL_TOPIC "$CONTROL/ota-auth/v1"
#define RESPONSE_TOPIC CONTROL_TOPIC "/response"
#define LOG_PREFIX "ota_auth: "

/* Bounds on what a control command may store: generous, and they keep the signing buffer and
 * every per-connect computation small and fixed. */
#define MAX_USERNAME 256
#define MAX_KEY 64 /* product key, device name */
#define MAX_SECRET 128
#define MAX_PASSWORD 512
#define MAX_TAG 128
#define MAX_ROLE 64
#define MAX_ACLS 64
#define MAX_TOPIC 512
#define MAX_CLIENT_ID 512
#define SALT_BYTES 16

enum kind { KIND_DEVICE, KIND_SERVICE };
enum rule_access { RULE_PUBLISH, RULE_SUBSCRIBE };

struct rule {
	enum rule_access access;
	char *topic;
};

struct user {
	struct user *next; /* hash chain */
	uint32_t hash;
	char *username;
	enum kind kind;
	bool enabled;
	char *tag;
	/* device: pk and dn parsed from the username `{dn}&{pk}` */
	char *pk, *dn, *secret;
	/* service */
	unsigned char salt[SALT_BYTES];
	unsigned char digest[SHA256_DIGEST_LENGTH];
	char *role;
	struct rule *rules;
	size_t nrules;
};

struct table {
	struct user **buckets;
	size_t nbuckets; /* a power of two */
	size_t count;
};

static mosquitto_plugin_id_t *plugin_id;
static struct table users;
static char *users_file;
static bool unsaved; /* changes of "deferSave" messages not saved yet */
static char *admin_username;
static unsigned char admin_salt[64];
static size_t admin_salt_len;
static unsigned char admin_digest[SHA256_DIGEST_LENGTH];

/* ---------------------------------------------------------------------------------------- */
/* Small helpers */

static uint32_t fnv1a(const char *s)
{
	uint32_t h = 2166136261u;
	for(; *s; s++){
		h ^= (unsigned char)*s;
		h *= 16777619u;
	}
	return h;
}

static char *dup_n(const char *s, size_t n)
{
	char *out = malloc(n + 1);
	if(out){
		memcpy(out, s, n);
		out[n] = '\0';
	}
	return out;
}

static int hex_value(int c)
{
	if(c >= '0' && c <= '9') return c - '0';
	c = tolower(c);
	if(c >= 'a' && c <= 'f') return c - 'a' + 10;
	return -1;
}

/* Decodes exactly `n` bytes of hex (either case); false on a wrong length or a non-hex digit. */
static bool hex_decode(const char *hex, size_t hex_len, unsigned char *out, size_t n)
{
	if(hex_len != 2 * n) return false;
	for(size_t i = 0; i < n; i++){
		int hi = hex_value((unsigned char)hex[2 * i]);
		int lo = hex_value((unsigned char)hex[2 * i + 1]);
		if(hi < 0 || lo < 0) return false;
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return true;
}

static void hex_encode(const unsigned char *in, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for(size_t i = 0; i < n; i++){
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 0x0f];
	}
	out[2 * n] = '\0';
}

static void salted_sha256(const unsigned char *salt, size_t salt_len, const char *password,
		unsigned char out[SHA256_DIGEST_LENGTH])
{
	/* One SHA-256 is enough: service passwords are 64-hex HMAC values (256 bits of entropy),
	 * not something a dictionary or a GPU farm can guess, so a slow KDF would only slow connects. */
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int len = 0;
	memset(out, 0, SHA256_DIGEST_LENGTH);
	if(ctx == NULL) return;
	if(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1
			|| EVP_DigestUpdate(ctx, salt, salt_len) != 1
			|| EVP_DigestUpdate(ctx, password, strlen(password)) != 1
			|| EVP_DigestFinal_ex(ctx, out, &len) != 1){
		memset(out, 0, SHA256_DIGEST_LENGTH);
	}
	EVP_MD_CTX_free(ctx);
}

/* Product keys and device names as ota accepts them (ota/services): no '/', '+', '#', '&', '|',
 * so they are safe as topic levels and `{pk}.{dn}` / `{dn}&{pk}` parse one way only. */
static bool valid_key(const char *s, size_t len, bool device_name)
{
	if(len == 0 || len > MAX_KEY) return false;
	for(size_t i = 0; i < len; i++){
		unsigned char c = (unsigned char)s[i];
		if(isalnum(c) || c == '_' || c == '-') continue;
		if(device_name && (c == '@' || c == '.' || c == ':')) continue;
		return false;
	}
	return true;
}

static bool printable(const char *s)
{
	for(; *s; s++){
		if((unsigned char)*s < 0x20 || *s == 0x7f) return false;
	}
	return true;
}

/* ---------------------------------------------------------------------------------------- */
/* The users table */

static void user_free(struct user *u)
{
	if(u == NULL) return;
	free(u->username);
	free(u->tag);
	free(u->pk);
	free(u->dn);
	if(u->secret){
		OPENSSL_cleanse(u->secret, strlen(u->secret));
		free(u->secret);
	}
	free(u->role);
	for(size_t i = 0; i < u->nrules; i++) free(u->rules[i].topic);
	free(u->rules);
	free(u);
}

static struct user *table_find(const char *username)
{
	if(username == NULL || users.nbuckets == 0) return NULL;
	uint32_t h = fnv1a(username);
	for(struct user *u = users.buckets[h & (users.nbuckets - 1)]; u; u = u->next){
		if(u->hash == h && strcmp(u->username, username) == 0) return u;
	}
	return NULL;
}

static bool table_grow(void)
{
	size_t n = users.nbuckets ? users.nbuckets * 2 : 1024;
	struct user **buckets = calloc(n, sizeof(*buckets));
	if(buckets == NULL) return false;
	for(size_t i = 0; i < users.nbuckets; i++){
		struct user *u = users.buckets[i];
		while(u){
			struct user *next = u->next;
			u->next = buckets[u->hash & (n - 1)];
			buckets[u->hash & (n - 1)] = u;
			u = next;
		}
	}
	free(users.buckets);
	users.buckets = buckets;
	users.nbuckets = n;
	return true;
}

/* Takes ownership of `u`; a user of the same name is replaced (and returned to be freed). */
static bool table_put(struct user *u, struct user **replaced)
{
	*replaced = NULL;
	if(users.count + 1 > users.nbuckets * 3 / 4 && !table_grow()) return false;
	u->hash = fnv1a(u->username);
	struct user **slot = &users.buckets[u->hash & (users.nbuckets - 1)];
	for(struct user **p = slot; *p; p = &(*p)->next){
		if((*p)->hash == u->hash && strcmp((*p)->username, u->username) == 0){
			*replaced = *p;
			u->next = (*p)->next;
			*p = u;
			return true;
		}
	}
	u->next = *slot;
	*slot = u;
	users.count++;
	return true;
}

static struct user *table_remove(const char *username)
{
	if(users.nbuckets == 0) return NULL;
	uint32_t h = fnv1a(username);
	for(struct user **p = &users.buckets[h & (users.nbuckets - 1)]; *p; p = &(*p)->next){
		if((*p)->hash == h && strcmp((*p)->username, username) == 0){
			struct user *u = *p;
			*p = u->next;
			users.count--;
			return u;
		}
	}
	return NULL;
}

static void table_clear(void)
{
	for(size_t i = 0; i < users.nbuckets; i++){
		struct user *u = users.buckets[i];
		while(u){
			struct user *next = u->next;
			user_free(u);
			u = next;
		}
	}
	free(users.buckets);
	memset(&users, 0, sizeof(users));
}

/* ---------------------------------------------------------------------------------------- */
/* Building users from JSON (control commands and the users file share this) */

/* A string member: NULL `*out` when absent and optional. Returns an error message or NULL. */
static const char *get_string(const cJSON *obj, const char *key, size_t max, bool required,
		const char **out)
{
	const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
	*out = NULL;
	if(j == NULL){
		return required ? "missing or invalid field" : NULL;
	}
	if(!cJSON_IsString(j) || j->valuestring == NULL) return "a field has the wrong type";
	if(strlen(j->valuestring) > max) return "a field is too long";
	if(!printable(j->valuestring)) return "a field has control characters";
	*out = j->valuestring;
	return NULL;
}

static const char *get_bool(const cJSON *obj, const char *key, bool fallback, bool *out)
{
	const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
	*out = fallback;
	if(j == NULL) return NULL;
	if(!cJSON_IsBool(j)) return "a field has the wrong type";
	*out = cJSON_IsTrue(j);
	return NULL;
}

static const char *device_names(struct user *u)
{
	const char *amp = strchr(u->username, '&');
	if(amp == NULL || strchr(amp + 1, '&')) return "a device username is {deviceName}&{productKey}";
	size_t dn_len = (size_t)(amp - u->username);
	const char *pk = amp + 1;
	if(!valid_key(u->username, dn_len, true) || !valid_key(pk, strlen(pk), false)){
		return "invalid product key or device name";
	}
	u->dn = dup_n(u->username, dn_len);
	u->pk = strdup(pk);
	return (u->dn && u->pk) ? NULL : "out of memory";
}

/* A device from {username, secret, enabled, tag}. */
static const char *device_from_json(const cJSON *j, struct user **out)
{
	const char *username, *secret, *tag, *err;
	bool enabled;
	*out = NULL;
	if((err = get_string(j, "username", MAX_USERNAME, true, &username))) return err;
	if((err = get_string(j, "secret", MAX_SECRET, true, &secret))) return err;
	if((err = get_string(j, "tag", MAX_TAG, false, &tag))) return err;
	if((err = get_bool(j, "enabled", true, &enabled))) return err;
	if(secret[0] == '\0') return "empty secret";
	if(admin_username && strcmp(username, admin_username) == 0) return "the admin is not a device";

	struct user *u = calloc(1, sizeof(*u));
	if(u == NULL) return "out of memory";
	u->kind = KIND_DEVICE;
	u->enabled = enabled;
	u->username = strdup(username);
	u->secret = strdup(secret);
	u->tag = strdup(tag ? tag : "");
	if(!u->username || !u->secret || !u->tag){
		user_free(u);
		return "out of memory";
	}
	if((err = device_names(u))){
		user_free(u);
		return err;
	}
	*out = u;
	return NULL;
}

static const char *rules_from_json(const cJSON *j, struct user *u)
{
	const cJSON *acls = cJSON_GetObjectItemCaseSensitive(j, "acls");
	if(acls == NULL) return NULL;
	if(!cJSON_IsArray(acls)) return "acls is not a list";
	int n = cJSON_GetArraySize(acls);
	if(n > MAX_ACLS) return "too many acls";
	if(n == 0) return NULL;
	u->rules = calloc((size_t)n, sizeof(*u->rules));
	if(u->rules == NULL) return "out of memory";
	const cJSON *acl;
	cJSON_ArrayForEach(acl, acls){
		const char *access, *topic, *err;
		if(!cJSON_IsObject(acl)) return "an acl is not an object";
		if((err = get_string(acl, "access", 16, true, &access))) return err;
		if((err = get_string(acl, "topic", MAX_TOPIC, true, &topic))) return err;
		struct rule *r = &u->rules[u->nrules];
		if(strcmp(access, "publish") == 0){
			r->access = RULE_PUBLISH;
		}else if(strcmp(access, "subscribe") == 0){
			r->access = RULE_SUBSCRIBE;
		}else{
			return "an acl's access is publish or subscribe";
		}
		if(topic[0] == '\0') return "an acl has an empty topic";
		if((r->topic = strdup(topic)) == NULL) return "out of memory";
		u->nrules++;
	}
	return NULL;
}

/* A service from {username, password, role, acls, enabled, tag}; from the users file, the
 * stored {salt, sha256} instead of the password. */
static const char *service_from_json(const cJSON *j, bool stored, struct user **out)
{
	const char *username, *password = NULL, *salt = NULL, *digest = NULL, *role, *tag, *err;
	bool enabled;
	*out = NULL;
	if((err = get_string(j, "username", MAX_USERNAME, true, &username))) return err;
	if(stored){
		if((err = get_string(j, "salt", 2 * SALT_BYTES, true, &salt))) return err;
		if((err = get_string(j, "sha256", 2 * SHA256_DIGEST_LENGTH, true, &digest))) return err;
	}else{
		if((err = get_string(j, "password", MAX_PASSWORD, true, &password))) return err;
		if(password[0] == '\0') return "empty password";
	}
	if((err = get_string(j, "role", MAX_ROLE, false, &role))) return err;
	if((err = get_string(j, "tag", MAX_TAG, false, &tag))) return err;
	if((err = get_bool(j, "enabled", true, &enabled))) return err;
	if(username[0] == '\0') return "empty username";
	if(admin_username && strcmp(username, admin_username) == 0){
		return "the admin is configured in mosquitto.conf";
	}

	struct user *u = calloc(1, sizeof(*u));
	if(u == NULL) return "out of memory";
	u->kind = KIND_SERVICE;
	u->enabled = enabled;
	u->username = strdup(username);
	u->role = strdup(role ? role : "");
	u->tag = strdup(tag ? tag : "");
	if(!u->username || !u->role || !u->tag){
		user_free(u);
		return "out of memory";
	}
	if(stored){
		if(!hex_decode(salt, strlen(salt), u->salt, SALT_BYTES)
				|| !hex_decode(digest, strlen(digest), u->digest, SHA256_DIGEST_LENGTH)){
			user_free(u);
			return "invalid stored password";
		}
	}else{
		if(RAND_bytes(u->salt, SALT_BYTES) != 1){
			user_free(u);
			return "no random bytes for a salt";
		}
		salted_sha256(u->salt, SALT_BYTES, password, u->digest);
	}
	if((err = rules_from_json(j, u))){
		user_free(u);
		return err;
	}
	*out = u;
	return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Persistence: the whole table, written once per control message that changed it */

static void write_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for(; *s; s++){
		unsigned char c = (unsigned char)*s;
		if(c == '"' || c == '\\'){
			fputc('\\', f);
			fputc(c, f);
		}else if(c < 0x20){
			fprintf(f, "\\u%04x", c);
		}else{
			fputc(c, f);
		}
	}
	fputc('"', f);
}

static void write_user(FILE *f, const struct user *u)
{
	fputs("{\"username\":", f);
	write_json_string(f, u->username);
	fprintf(f, ",\"kind\":\"%s\",\"enabled\":%s,\"tag\":",
			u->kind == KIND_DEVICE ? "device" : "service", u->enabled ? "true" : "false");
	write_json_string(f, u->tag);
	if(u->kind == KIND_DEVICE){
		fputs(",\"secret\":", f);
		write_json_string(f, u->secret);
	}else{
		char salt[2 * SALT_BYTES + 1], digest[2 * SHA256_DIGEST_LENGTH + 1];
		hex_encode(u->salt, SALT_BYTES, salt);
		hex_encode(u->digest, SHA256_DIGEST_LENGTH, digest);
		fprintf(f, ",\"salt\":\"%s\",\"sha256\":\"%s\",\"role\":", salt, digest);
		write_json_string(f, u->role);
		fputs(",\"acls\":[", f);
		for(size_t i = 0; i < u->nrules; i++){
			fprintf(f, "%s{\"access\":\"%s\",\"topic\":", i ? "," : "",
					u->rules[i].access == RULE_PUBLISH ? "publish" : "subscribe");
			write_json_string(f, u->rules[i].topic);
			fputc('}', f);
		}
		fputc(']', f);
	}
	fputc('}', f);
}

/* The rename itself reaches the disk only with the folder's entry: sync that too. */
static void sync_folder(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *folder = slash ? dup_n(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
	if(folder == NULL) return;
	int fd = open(folder, O_RDONLY | O_DIRECTORY);
	if(fd >= 0){
		fsync(fd);
		close(fd);
	}
	free(folder);
}

/* Writes a temporary file (0600: it holds device secrets), syncs it and renames it over the
 * users file, so a crash leaves either the old table or the new one, never half of one. */
static int table_save(void)
{
	size_t n = strlen(users_file) + 5;
	char *tmp = malloc(n);
	if(tmp == NULL) return MOSQ_ERR_NOMEM;
	snprintf(tmp, n, "%s.tmp", users_file);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if(fd < 0 || fchmod(fd, 0600) != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot write %s: %s", tmp, strerror(errno));
		if(fd >= 0) close(fd);
		free(tmp);
		return MOSQ_ERR_UNKNOWN;
	}
	FILE *f = fdopen(fd, "w");
	if(f == NULL){
		close(fd);
		free(tmp);
		return MOSQ_ERR_NOMEM;
	}
	fputs("{\"version\":1,\"users\":[\n", f);
	bool first = true;
	for(size_t i = 0; i < users.nbuckets; i++){
		for(struct user *u = users.buckets[i]; u; u = u->next){
			if(!first) fputs(",\n", f);
			first = false;
			write_user(f, u);
		}
	}
	fputs("\n]}\n", f);
	bool ok = fflush(f) == 0 && !ferror(f) && fsync(fd) == 0;
	if(fclose(f) != 0) ok = false;
	if(ok && rename(tmp, users_file) != 0) ok = false;
	if(ok) sync_folder(users_file);
	if(!ok){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot save %s: %s", users_file, strerror(errno));
		unlink(tmp);
	}
	free(tmp);
	return ok ? MOSQ_ERR_SUCCESS : MOSQ_ERR_UNKNOWN;
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if(f == NULL) return NULL;
	char *buf = NULL;
	if(fseek(f, 0, SEEK_END) == 0){
		long size = ftell(f);
		if(size >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)size + 1))){
			*len = fread(buf, 1, (size_t)size, f);
			buf[*len] = '\0';
		}
	}
	fclose(f);
	return buf;
}

/* A missing file is an empty table; a file that does not parse stops the broker, rather than
 * let the next save overwrite it. */
static int table_load(void)
{
	size_t len = 0;
	char *text = read_file(users_file, &len);
	if(text == NULL){
		if(errno == ENOENT){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, LOG_PREFIX "%s does not exist yet: no users",
					users_file);
			return MOSQ_ERR_SUCCESS;
		}
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot read %s: %s", users_file, strerror(errno));
		return MOSQ_ERR_UNKNOWN;
	}
	cJSON *tree = cJSON_ParseWithLength(text, len);
	OPENSSL_cleanse(text, len);
	free(text);
	const cJSON *list = tree ? cJSON_GetObjectItemCaseSensitive(tree, "users") : NULL;
	if(!cJSON_IsArray(list)){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "%s is not a users file", users_file);
		cJSON_Delete(tree);
		return MOSQ_ERR_UNKNOWN;
	}
	const cJSON *j;
	int rc = MOSQ_ERR_SUCCESS;
	cJSON_ArrayForEach(j, list){
		const cJSON *kind = cJSON_GetObjectItemCaseSensitive(j, "kind");
		struct user *u = NULL, *old = NULL;
		const char *err;
		if(cJSON_IsString(kind) && strcmp(kind->valuestring, "device") == 0){
			err = device_from_json(j, &u);
		}else if(cJSON_IsString(kind) && strcmp(kind->valuestring, "service") == 0){
			err = service_from_json(j, true, &u);
		}else{
			err = "unknown kind";
		}
		if(err == NULL && !table_put(u, &old)) err = "out of memory";
		if(err){
			mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "%s: a user: %s", users_file, err);
			user_free(u);
			rc = MOSQ_ERR_UNKNOWN;
			break;
		}
		user_free(old);
	}
	cJSON_Delete(tree);
	if(rc == MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_INFO, LOG_PREFIX "%zu users from %s", users.count, users_file);
	}
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Authentication */

/* The value of `key` among the client id's `k=v,k=v` parameters (not NUL-terminated). */
static bool param(const char *params, size_t len, const char *key, const char **value, size_t *vlen)
{
	size_t klen = strlen(key);
	const char *p = params, *end = params + len;
	while(p < end){
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *item_end = comma ? comma : end;
		if((size_t)(item_end - p) > klen && memcmp(p, key, klen) == 0 && p[klen] == '='){
			*value = p + klen + 1;
			*vlen = (size_t)(item_end - *value);
			return true;
		}
		p = item_end + 1;
	}
	return false;
}

static bool cid_is(const char *cid, size_t cid_len, const struct user *u, char sep)
{
	size_t pk_len = strlen(u->pk), dn_len = strlen(u->dn);
	return cid_len == pk_len + 1 + dn_len && memcmp(cid, u->pk, pk_len) == 0
		&& cid[pk_len] == sep && memcmp(cid + pk_len + 1, u->dn, dn_len) == 0;
}

/* Alibaba's signature (PROTOCOL.md). The sign method must be named (a plain client id carries
 * none, so it is refused); the timestamp is optional, as on Alibaba's broker, and signed only
 * when present. */
static bool device_authenticates(const struct user *u, const char *client_id, const char *password)
{
	size_t id_len = strlen(client_id);
	const char *bar = memchr(client_id, '|', id_len);
	if(bar == NULL || id_len > MAX_CLIENT_ID || client_id[id_len - 1] != '|' || bar == client_id + id_len - 1){
		return false;
	}
	size_t cid_len = (size_t)(bar - client_id);
	const char *params = bar + 1;
	size_t params_len = id_len - cid_len - 2;
	if(memchr(params, '|', params_len)) return false;
	/* Its own client id only: a device can take neither the bridge's nor another device's. */
	if(!cid_is(client_id, cid_len, u, '.') && !cid_is(client_id, cid_len, u, '&')) return false;

	const char *method, *ts = NULL;
	size_t method_len, ts_len = 0;
	if(!param(params, params_len, "signmethod", &method, &method_len)) return false;
	const EVP_MD *md;
	if(method_len == 8 && memcmp(method, "hmacsha1", 8) == 0){
		md = EVP_sha1();
	}else if(method_len == 10 && memcmp(method, "hmacsha256", 10) == 0){
		md = EVP_sha256();
	}else if(method_len == 7 && memcmp(method, "hmacmd5", 7) == 0){
		md = EVP_md5();
	}else{
		return false;
	}
	bool has_ts = param(params, params_len, "timestamp", &ts, &ts_len);

	/* Bounded by MAX_CLIENT_ID and MAX_KEY: "clientId" cid "deviceName" dn "productKey" pk
	 * "timestamp" ts. */
	char content[2 * MAX_CLIENT_ID + 2 * MAX_KEY + 64];
	int n = snprintf(content, sizeof(content), "clientId%.*sdeviceName%sproductKey%s%s%.*s",
			(int)cid_len, client_id, u->dn, u->pk, has_ts ? "timestamp" : "",
			(int)ts_len, has_ts ? ts : "");
	if(n < 0 || (size_t)n >= sizeof(content)) return false;

	unsigned char expected[EVP_MAX_MD_SIZE], given[EVP_MAX_MD_SIZE];
	unsigned int expected_len = 0;
	if(HMAC(md, u->secret, (int)strlen(u->secret), (const unsigned char *)content, (size_t)n,
				expected, &expected_len) == NULL){
		return false;
	}
	bool ok = hex_decode(password, strlen(password), given, expected_len)
		&& CRYPTO_memcmp(given, expected, expected_len) == 0;
	OPENSSL_cleanse(expected, sizeof(expected));
	return ok;
}

static bool digest_matches(const unsigned char *salt, size_t salt_len,
		const unsigned char *digest, const char *password)
{
	unsigned char given[SHA256_DIGEST_LENGTH];
	salted_sha256(salt, salt_len, password, given);
	return CRYPTO_memcmp(given, digest, SHA256_DIGEST_LENGTH) == 0;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	(void)event;
	(void)userdata;
	/* We are the authority: an unknown user is refused, not deferred to anonymous access. */
	if(ed->username == NULL || ed->password == NULL) return MOSQ_ERR_AUTH;
	if(admin_username && strcmp(ed->username, admin_username) == 0){
		return digest_matches(admin_salt, admin_salt_len, admin_digest, ed->password)
			? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH;
	}
	const struct user *u = table_find(ed->username);
	if(u == NULL || !u->enabled) return MOSQ_ERR_AUTH;
	if(u->kind == KIND_SERVICE){
		/* Client id free: several bridges (shared subscriptions) run under one account. */
		return digest_matches(u->salt, SALT_BYTES, u->digest, ed->password)
			? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH;
	}
	const char *client_id = mosquitto_client_id(ed->client);
	if(client_id == NULL) return MOSQ_ERR_AUTH;
	return device_authenticates(u, client_id, ed->password) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_AUTH;
}

/* ---------------------------------------------------------------------------------------- */
/* Authorisation */

/* Whether the subscription filter (or, for a publish, the topic) `topic` lies within `rule`,
 * level by level: a `+` in the rule covers any one level (a `+` in the filter too), a trailing
 * `#` covers the rest (and a `#` in the filter). A wildcard in the filter is only covered by a
 * wildcard in the rule, so `#` never matches `/ota/device/upgrade/+/+`. */
static bool rule_covers(const char *rule, const char *topic)
{
	for(;;){
		if(rule[0] == '#' && rule[1] == '\0') return true;
		const char *r_end = strchr(rule, '/');
		const char *t_end = strchr(topic, '/');
		size_t r_len = r_end ? (size_t)(r_end - rule) : strlen(rule);
		size_t t_len = t_end ? (size_t)(t_end - topic) : strlen(topic);
		bool level_ok = (r_len == 1 && rule[0] == '+')
			? !(t_len == 1 && topic[0] == '#')
			: (r_len == t_len && memcmp(rule, topic, r_len) == 0);
		if(!level_ok) return false;
		if(r_end == NULL || t_end == NULL){
			/* `a/#` also covers `a` itself, as in MQTT matching. */
			return (r_end == NULL && t_end == NULL)
				|| (t_end == NULL && strcmp(r_end, "/#") == 0);
		}
		rule = r_end + 1;
		topic = t_end + 1;
	}
}

/* topic == prefix + pk + "/" + dn, without building the string (this runs for every message). */
static bool own_topic(const char *topic, const char *prefix, const struct user *u)
{
	size_t p = strlen(prefix), pk = strlen(u->pk);
	return strncmp(topic, prefix, p) == 0 && strncmp(topic + p, u->pk, pk) == 0
		&& topic[p + pk] == '/' && strcmp(topic + p + pk + 1, u->dn) == 0;
}

/* Under /sys/{pk}/{dn}/ (or that level itself): the device's namespace on Alibaba's broker. */
static bool own_sys(const char *topic, const struct user *u)
{
	size_t pk = strlen(u->pk), dn = strlen(u->dn);
	if(strncmp(topic, "/sys/", 5) != 0) return false;
	topic += 5;
	if(strncmp(topic, u->pk, pk) != 0 || topic[pk] != '/') return false;
	topic += pk + 1;
	if(strncmp(topic, u->dn, dn) != 0) return false;
	return topic[dn] == '\0' || topic[dn] == '/';
}

static bool device_may(const struct user *u, int access, const char *topic)
{
	if(access == MOSQ_ACL_WRITE){
		return own_topic(topic, "/ota/device/inform/", u)
			|| own_topic(topic, "/ota/device/progress/", u)
			|| own_topic(topic, "/ota/device/status/", u)
			|| own_sys(topic, u);
	}
	return own_topic(topic, "/ota/device/upgrade/", u) || own_sys(topic, u);
}

static bool service_may(const struct user *u, int access, const char *topic)
{
	enum rule_access wanted = access == MOSQ_ACL_WRITE ? RULE_PUBLISH : RULE_SUBSCRIBE;
	for(size_t i = 0; i < u->nrules; i++){
		if(u->rules[i].access == wanted && rule_covers(u->rules[i].topic, topic)) return true;
	}
	return false;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;
	const char *username = mosquitto_client_username(ed->client);
	if(username == NULL || ed->topic == NULL) return MOSQ_ERR_ACL_DENIED;
	bool admin = admin_username && strcmp(username, admin_username) == 0;
	const struct user *u = admin ? NULL : table_find(username);
	if(!admin && (u == NULL || !u->enabled)) return MOSQ_ERR_ACL_DENIED;

	/* Delivery of what a client subscribed to (its subscribe was checked) and unsubscribing. */
	if(ed->access == MOSQ_ACL_READ || ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	if(ed->access != MOSQ_ACL_WRITE && ed->access != MOSQ_ACL_SUBSCRIBE) return MOSQ_ERR_ACL_DENIED;

	const char *topic = ed->topic;
	if(ed->access == MOSQ_ACL_SUBSCRIBE && strncmp(topic, "$share/", 7) == 0){
		const char *slash = strchr(topic + 7, '/');
		if(slash == NULL) return MOSQ_ERR_ACL_DENIED;
		topic = slash + 1; /* the filter the shared subscription is of */
	}
	if(admin){
		bool ok = ed->access == MOSQ_ACL_WRITE ? strcmp(topic, CONTROL_TOPIC) == 0
			: strcmp(topic, RESPONSE_TOPIC) == 0;
		return ok ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	}
	bool ok = u->kind == KIND_DEVICE ? device_may(u, ed->access, topic)
		: service_may(u, ed->access, topic);
	return ok ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

/* ---------------------------------------------------------------------------------------- */
/* Control */

struct kicks {
	char **names;
	size_t count, cap;
};

static void kick_later(struct kicks *k, const char *username)
{
	if(k->count == k->cap){
		size_t cap = k->cap ? k->cap * 2 : 16;
		char **names = realloc(k->names, cap * sizeof(*names));
		if(names == NULL) return; /* out of memory: the change holds, the connection lives on */
		k->names = names;
		k->cap = cap;
	}
	if((k->names[k->count] = strdup(username))) k->count++;
}

static bool same_rules(const struct user *a, const struct user *b)
{
	if(a->nrules != b->nrules || strcmp(a->role, b->role) != 0) return false;
	for(size_t i = 0; i < a->nrules; i++){
		if(a->rules[i].access != b->rules[i].access || strcmp(a->rules[i].topic, b->rules[i].topic)){
			return false;
		}
	}
	return true;
}

/* Whether replacing `old` with `new` must drop old's live connections: its credentials, its
 * rights or its state changed. A sync that re-sends a user unchanged drops nobody. */
static bool must_kick(const struct user *old, const struct user *new)
{
	if(old->kind != new->kind || (old->enabled && !new->enabled)) return true;
	if(old->kind == KIND_DEVICE) return strcmp(old->secret, new->secret) != 0;
	/* keep_salt_if_same gave an unchanged password the old salt, so equal digests mean equal
	 * passwords. */
	if(CRYPTO_memcmp(old->digest, new->digest, SHA256_DIGEST_LENGTH) != 0) return true;
	return !same_rules(old, new);
}

static cJSON *user_json(const struct user *u)
{
	cJSON *j = cJSON_CreateObject();
	if(j == NULL) return NULL;
	cJSON_AddStringToObject(j, "username", u->username);
	cJSON_AddStringToObject(j, "kind", u->kind == KIND_DEVICE ? "device" : "service");
	cJSON_AddBoolToObject(j, "enabled", u->enabled);
	cJSON_AddStringToObject(j, "tag", u->tag);
	if(u->kind == KIND_SERVICE) cJSON_AddStringToObject(j, "role", u->role);
	return j;
}

/* Replaces `u`'s digest by the one `old` already holds when the password is the same, so that
 * re-sending a service unchanged keeps its salt (and its connections). */
static void keep_salt_if_same(struct user *u, const struct user *old, const char *password)
{
	if(old && old->kind == KIND_SERVICE && digest_matches(old->salt, SALT_BYTES, old->digest, password)){
		memcpy(u->salt, old->salt, SALT_BYTES);
		memcpy(u->digest, old->digest, SHA256_DIGEST_LENGTH);
	}
}

/* One command: returns an error message, or NULL with `*data` set when it answers with data. */
static const char *run_command(const char *name, const cJSON *cmd, bool *dirty, struct kicks *kicks,
		cJSON **data)
{
	const char *err;
	*data = NULL;
	if(strcmp(name, "setDevice") == 0 || strcmp(name, "setService") == 0){
		struct user *u = NULL, *old = NULL;
		bool device = name[3] == 'D';
		err = device ? device_from_json(cmd, &u) : service_from_json(cmd, false, &u);
		if(err) return err;
		if(!device){
			const cJSON *pw = cJSON_GetObjectItemCaseSensitive(cmd, "password");
			keep_salt_if_same(u, table_find(u->username), pw->valuestring);
		}
		if(!table_put(u, &old)){
			user_free(u);
			return "out of memory";
		}
		if(old && must_kick(old, u)) kick_later(kicks, u->username);
		user_free(old);
		*dirty = true;
		return NULL;
	}
	if(strcmp(name, "deleteUser") == 0 || strcmp(name, "disableUser") == 0
			|| strcmp(name, "enableUser") == 0){
		const char *username;
		if((err = get_string(cmd, "username", MAX_USERNAME, true, &username))) return err;
		if(name[0] == 'd' && name[1] == 'e'){
			struct user *u = table_remove(username);
			if(u == NULL) return "User not found";
			kick_later(kicks, username);
			user_free(u);
		}else{
			struct user *u = table_find(username);
			if(u == NULL) return "User not found";
			bool enable = name[0] == 'e';
			if(u->enabled && !enable) kick_later(kicks, username);
			u->enabled = enable;
		}
		*dirty = true;
		return NULL;
	}
	if(strcmp(name, "listUsers") == 0 || strcmp(name, "getUsers") == 0){
		cJSON *out = cJSON_CreateObject();
		cJSON *list = cJSON_AddArrayToObject(out, "users");
		if(out == NULL || list == NULL){
			cJSON_Delete(out);
			return "out of memory";
		}
		if(name[0] == 'l'){
			for(size_t i = 0; i < users.nbuckets; i++){
				for(struct user *u = users.buckets[i]; u; u = u->next){
					cJSON_AddItemToArray(list, user_json(u));
				}
			}
		}else{
			const cJSON *names = cJSON_GetObjectItemCaseSensitive(cmd, "usernames"), *n;
			if(!cJSON_IsArray(names)){
				cJSON_Delete(out);
				return "usernames is not a list";
			}
			cJSON_ArrayForEach(n, names){
				const struct user *u = cJSON_IsString(n) ? table_find(n->valuestring) : NULL;
				if(u) cJSON_AddItemToArray(list, user_json(u));
			}
		}
		*data = out;
		return NULL;
	}
	return "Unknown command";
}

static void respond(cJSON *responses, const char *command, const cJSON *correlation,
		const char *error, cJSON *data)
{
	cJSON *r = cJSON_CreateObject();
	if(r == NULL){
		cJSON_Delete(data);
		return;
	}
	cJSON_AddStringToObject(r, "command", command);
	if(cJSON_IsString(correlation)) cJSON_AddStringToObject(r, "correlationData", correlation->valuestring);
	if(error) cJSON_AddStringToObject(r, "error", error);
	if(data) cJSON_AddItemToObject(r, "data", data);
	cJSON_AddItemToArray(responses, r);
}

static void send_responses(struct mosquitto *client, cJSON *tree)
{
	char *text = cJSON_PrintUnformatted(tree);
	const char *client_id = mosquitto_client_id(client);
	/* To the client that asked only: another admin connection has no business reading it. */
	if(text && client_id){
		mosquitto_broker_publish_copy(client_id, RESPONSE_TOPIC, (int)strlen(text), text, 1, false, NULL);
	}
	free(text);
}

static int on_control(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	(void)event;
	(void)userdata;
	cJSON *out = cJSON_CreateObject();
	cJSON *responses = cJSON_AddArrayToObject(out, "responses");
	if(out == NULL || responses == NULL){
		cJSON_Delete(out);
		return MOSQ_ERR_NOMEM;
	}
	/* The ACL already keeps others off the control topic; this holds even if another plugin's
	 * ACL let them through. */
	const char *username = mosquitto_client_username(ed->client);
	if(admin_username == NULL || username == NULL || strcmp(username, admin_username) != 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING, LOG_PREFIX "control message refused from %s",
				username ? username : "an anonymous client");
		respond(responses, "", NULL, "Not authorised", NULL);
		send_responses(ed->client, out);
		cJSON_Delete(out);
		return MOSQ_ERR_SUCCESS;
	}

	/* Mosquitto NUL-terminates payloads, but the length is what counts. */
	cJSON *tree = cJSON_ParseWithLength(ed->payload, ed->payloadlen);
	const cJSON *commands = tree ? cJSON_GetObjectItemCaseSensitive(tree, "commands") : NULL;
	if(!cJSON_IsArray(commands)){
		respond(responses, "", NULL, tree ? "Invalid/missing commands" : "Payload not valid JSON", NULL);
		send_responses(ed->client, out);
		cJSON_Delete(tree);
		cJSON_Delete(out);
		return MOSQ_ERR_SUCCESS;
	}
	bool dirty = false;
	struct kicks kicks = {0};
	const cJSON *cmd;
	cJSON_ArrayForEach(cmd, commands){
		const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "command");
		const cJSON *correlation = cJSON_GetObjectItemCaseSensitive(cmd, "correlationData");
		if(!cJSON_IsObject(cmd) || !cJSON_IsString(name)){
			respond(responses, "", correlation, "Invalid command", NULL);
			continue;
		}
		cJSON *data = NULL;
		const char *err = run_command(name->valuestring, cmd, &dirty, &kicks, &data);
		respond(responses, name->valuestring, correlation, err, data);
	}
	/* Once per message, whatever its size; a message that says "deferSave" (one of a
	 * registration's many) leaves it to the next that does not (its last): each save writes the
	 * whole table, so 100,000 users in 100 messages saved each time wrote 650 MB, 37 s. */
	unsaved = unsaved || dirty;
	const cJSON *defer = cJSON_GetObjectItemCaseSensitive(tree, "deferSave");
	if(unsaved && !cJSON_IsTrue(defer)){
		if(table_save() == MOSQ_ERR_SUCCESS){
			unsaved = false;
		}else{
			respond(responses, "save", NULL, "the broker could not save its users file (see its log)", NULL);
		}
	}
	/* After the save: a dropped device that reconnects at once meets the new state. */
	for(size_t i = 0; i < kicks.count; i++){
		mosquitto_kick_client_by_username(kicks.names[i], false);
		free(kicks.names[i]);
	}
	free(kicks.names);
	send_responses(ed->client, out);
	cJSON_Delete(tree);
	cJSON_Delete(out);
	return MOSQ_ERR_SUCCESS;
}

/* ---------------------------------------------------------------------------------------- */
/* Plugin entry points */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

static void cleanup_options(void)
{
	free(users_file);
	free(admin_username);
	users_file = admin_username = NULL;
	OPENSSL_cleanse(admin_digest, sizeof(admin_digest));
}

static bool parse_admin_hash(const char *value)
{
	const char *colon = strchr(value, ':');
	if(colon == NULL) return false;
	size_t salt_hex = (size_t)(colon - value);
	if(salt_hex == 0 || salt_hex % 2 || salt_hex / 2 > sizeof(admin_salt)) return false;
	admin_salt_len = salt_hex / 2;
	return hex_decode(value, salt_hex, admin_salt, admin_salt_len)
		&& hex_decode(colon + 1, strlen(colon + 1), admin_digest, SHA256_DIGEST_LENGTH);
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	bool admin_set = false;
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		const char *key = options[i].key, *value = options[i].value;
		if(strcmp(key, "users_file") == 0){
			free(users_file);
			users_file = strdup(value);
		}else if(strcmp(key, "admin_username") == 0){
			free(admin_username);
			admin_username = strdup(value);
		}else if(strcmp(key, "admin_password_sha256") == 0){
			admin_set = parse_admin_hash(value);
			if(!admin_set){
				mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "plugin_opt_admin_password_sha256 is "
						"SALTHEX:SHA256HEX (`ota broker config` prints it)");
			}
		}
	}
	if(admin_username == NULL) admin_username = strdup("ota-admin");
	if(users_file == NULL || admin_username == NULL || !admin_set){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "needs plugin_opt_users_file and "
				"plugin_opt_admin_password_sha256 (`ota broker config` prints them)");
		cleanup_options();
		return MOSQ_ERR_INVAL;
	}
	if(table_load() != MOSQ_ERR_SUCCESS){
		table_clear();
		cleanup_options();
		return MOSQ_ERR_INVAL;
	}
	int rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC, NULL);
	}
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, LOG_PREFIX "cannot register its callbacks (%d)", rc);
	}
	return rc;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	if(plugin_id){
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
		mosquitto_callback_unregister(plugin_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC);
	}
	/* A sync that stopped before its last message: what it set is kept all the same. */
	if(unsaved && users_file) table_save();
	table_clear();
	cleanup_options();
	return MOSQ_ERR_SUCCESS;
}
