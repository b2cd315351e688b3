/*
** tmpdir.h: a temporary directory for a C test's files.
**   tmpdir_make("name") once in main; in_dir("file") gives a path in it (four
**   rotating buffers); write_bytes writes a whole file; tmpdir_remove()
**   removes the directory and everything below it.
*/
#ifndef DPO_TMPDIR_H
#define DPO_TMPDIR_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

/* Make /tmp/NAME.XXXXXX; 0, or -1 with a message. */
static inline int tmpdir_make(const char *name) {
    snprintf(dir, sizeof dir, "/tmp/%s.XXXXXX", name);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

static inline char *in_dir(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static inline void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    if (n) fwrite(p, 1, n, f);
    fclose(f);
}

static inline void remove_tree(const char *d) {
    DIR *dd = opendir(d);
    struct dirent *de;
    char p[512];
    if (!dd) return;
    while ((de = readdir(dd)) != NULL) {
        struct stat sb;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (snprintf(p, sizeof p, "%s/%s", d, de->d_name) >= (int)sizeof p) continue;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree(p);
        else
            unlink(p);
    }
    closedir(dd);
    rmdir(d);
}

static inline void tmpdir_remove(void) {
    remove_tree(dir);
}

#endif
