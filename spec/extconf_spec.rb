# frozen_string_literal: true

require "open3"
require "tmpdir"
require "rbconfig"

# ext/mega_mutex/extconf.rb stops with a clear message where a Linux (glibc)
# call the extension needs is missing. Simulated on Linux by renaming the
# calls with the preprocessor: the header still declares them (under the new
# name), so the probe compiles, but nothing defines them and the link fails,
# as it would on a libc without them.
RSpec.describe "ext/mega_mutex/extconf.rb" do
  extconf = File.expand_path("../ext/mega_mutex/extconf.rb", __dir__)

  it "stops, naming each missing call and that MegaMutex needs Linux (glibc), and writes no Makefile" do
    Dir.mktmpdir("mm-extconf") do |dir|
      renames = "-Deventfd=mm_absent_eventfd -Dpthread_condattr_setclock=mm_absent_setclock"
      out, err, status = Open3.capture3(RbConfig.ruby, extconf, "--with-cppflags=#{renames}", chdir: dir)
      expect(status).not_to be_success
      message = out + err
      expect(message).to include("MegaMutex needs Linux (glibc)")
      expect(message).to match(/^\s+eventfd\(\) \(sys\/eventfd\.h, with _GNU_SOURCE\)/)
      expect(message).to match(/^\s+pthread_condattr_setclock\(\) \(pthread\.h, with _GNU_SOURCE\)/)
      expect(message).not_to match(/^\s+ppoll\(\)/) # present: not named
      expect(File).not_to exist(File.join(dir, "Makefile"))
    end
  end
end
