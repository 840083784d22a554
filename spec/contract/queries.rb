# frozen_string_literal: true

require "timeout"

# get_current_lock, Lock#locked?, Lock#holder and Lock#owned? agree with who
# holds the lock: nobody, this thread, another thread, another process.
RSpec.shared_examples "contract: queries" do
  describe "who holds it" do
    # [get_current_lock, locked?, holder, owned?] for `id`, seen through `lock`.
    def answers(id, lock)
      [MegaMutex.get_current_lock(id), lock.locked?, lock.holder, lock.owned?]
    end

    it "nobody: nil, false, nil, not owned" do
      expect(answers("q", MegaMutex::Lock.new("q"))).to eq([nil, false, nil, false])
    end

    it "this thread: every Lock on the id sees the same token (host:pid:random); only the holding Lock owns it" do
      mine = MegaMutex::Lock.new("q")
      other = MegaMutex::Lock.new("q")
      mine.lock
      token = mine.holder
      expect(token).to match(ContractHelpers::TOKEN)
      expect(token[ContractHelpers::TOKEN, 1]).to eq(Process.pid.to_s)
      expect(answers("q", mine)).to eq([token, true, token, true])
      expect(answers("q", other)).to eq([token, true, token, false])
      expect(MegaMutex.with_distributed_mutex("q") { |lock| lock.holder }).to eq(token) # a nested block: the same holder
      expect(mine.unlock).to be(true)
      expect(answers("q", other)).to eq([nil, false, nil, false])
    end

    it "another thread: the holder's token, not owned here; nil once it lets go" do
      holder = hold_elsewhere("q")
      lock = MegaMutex::Lock.new("q")
      expect(holder.token).to match(ContractHelpers::TOKEN)
      expect(answers("q", lock)).to eq([holder.token, true, holder.token, false])
      holder.release
      expect(answers("q", lock)).to eq([nil, false, nil, false])
    end

    it "every acquisition has a token of its own" do
      tokens = Array.new(3) { MegaMutex.with_distributed_mutex("q") { MegaMutex.get_current_lock("q") } }
      tokens << Thread.new { MegaMutex.with_distributed_mutex("q") { MegaMutex.get_current_lock("q") } }.value
      expect(tokens).to all(match(ContractHelpers::TOKEN))
      expect(tokens.uniq.size).to eq(4)
    end

    it "another process: its token (with its pid) is seen here, it is refused here, and nil once it lets go" do
      skip "#{backend} locks are not shared between processes" unless backend.processes?

      held_reader, held_writer = IO.pipe
      go_reader, go_writer = IO.pipe
      pid, reader = fork_child do
        held_reader.close
        go_writer.close
        MegaMutex.with_distributed_mutex("q") do |lock|
          held_writer.write("#{lock.holder}\n")
          held_writer.close
          go_reader.gets
        end
        :released
      end
      held_writer.close
      go_reader.close
      token = Timeout.timeout(30) { held_reader.gets }&.chomp
      expect(token).to match(ContractHelpers::TOKEN)
      expect(token[ContractHelpers::TOKEN, 1]).to eq(pid.to_s)
      lock = MegaMutex::Lock.new("q")
      expect(answers("q", lock)).to eq([token, true, token, false])
      expect(lock.try_lock).to be(false)
      expect { MegaMutex.with_distributed_mutex("q", timeout: 0) { :ran } }
        .to raise_error(MegaMutex::TimeoutError) { |e| expect(e.holder).to eq(token) }
      go_writer.write("go\n")
      go_writer.close
      expect(child_value(pid, reader)).to eq(:released)
      expect(answers("q", lock)).to eq([nil, false, nil, false])
    ensure
      [held_reader, go_writer].each { |io| io&.close unless io&.closed? }
    end
  end
end
