package aibatch.hadoop;

import java.io.IOException;
import java.net.URI;
import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.attribute.PosixFilePermissions;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.ChecksumFs;
import org.apache.hadoop.fs.DelegateToFileSystem;
import org.apache.hadoop.fs.FileContext;
import org.apache.hadoop.fs.FsConstants;
import org.apache.hadoop.fs.FsServerDefaults;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.local.LocalConfigKeys;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.io.nativeio.NativeIO;

/**
 * Hadoop's local file system (org.apache.hadoop.fs.local.LocalFs) with one
 * change: without Hadoop's native library, setPermission sets the bits
 * through java.nio instead of starting a chmod process.
 *
 * The local YARN's NodeManager uses it (fs.AbstractFileSystem.file.impl in
 * its own conf dir; infra/yarn.py): localising the packed environment sets
 * the permissions of each of its tens of thousands of files, one process
 * each in RawLocalFileSystem. With the native library, or for a mode
 * java.nio cannot set (the sticky bit), it does what Hadoop does.
 */
public class NioLocalFs extends ChecksumFs {

  public NioLocalFs(URI uri, Configuration conf) throws IOException, URISyntaxException {
    super(new Raw(uri, conf));
  }

  public NioLocalFs(Configuration conf) throws IOException, URISyntaxException {
    this(FsConstants.LOCAL_FS_URI, conf);
  }

  /** org.apache.hadoop.fs.local.RawLocalFs over NioRawLocalFileSystem. */
  public static class Raw extends DelegateToFileSystem {
    public Raw(URI uri, Configuration conf) throws IOException, URISyntaxException {
      super(uri, new NioRawLocalFileSystem(), conf, FsConstants.LOCAL_FS_URI.getScheme(), false);
    }

    @Override
    public int getUriDefaultPort() {
      return -1; // no default port for file:///
    }

    @Override
    @Deprecated
    public FsServerDefaults getServerDefaults() throws IOException {
      return LocalConfigKeys.getServerDefaults();
    }

    @Override
    public boolean isValidName(String src) {
      return true; // as RawLocalFs: different local file systems differ
    }
  }

  /** RawLocalFileSystem whose setPermission needs no process. */
  public static class NioRawLocalFileSystem extends RawLocalFileSystem {
    @Override
    public void setPermission(Path p, FsPermission permission) throws IOException {
      if (NativeIO.isAvailable() || permission.getStickyBit()) {
        super.setPermission(p, permission);
        return;
      }
      String rwx = permission.getUserAction().SYMBOL + permission.getGroupAction().SYMBOL
          + permission.getOtherAction().SYMBOL;
      Files.setPosixFilePermissions(pathToFile(p).toPath(), PosixFilePermissions.fromString(rwx));
    }
  }

  /**
   * java aibatch.hadoop.NioLocalFs IMPL MODE PATH...: sets each path's mode
   * (octal, as chmod) through FileContext's local file system, IMPL as
   * fs.AbstractFileSystem.file.impl ("-": Hadoop's own). For tests.
   */
  public static void main(String[] args) throws Exception {
    Configuration conf = new Configuration();
    if (!args[0].equals("-")) {
      conf.set("fs.AbstractFileSystem.file.impl", args[0]);
    }
    FileContext fc = FileContext.getLocalFSFileContext(conf);
    FsPermission mode = new FsPermission(Short.parseShort(args[1], 8));
    for (int i = 2; i < args.length; i++) {
      fc.setPermission(new Path(args[i]), mode);
    }
  }
}
